"""The table `make demo` ends with: what the run measured, and its own checks.

    python -m megatron_ego.eval.demo_summary --run runs/demo

Training: each loss term's mean over the first and the last 20 optimizer steps (a term counts
only on the steps that trained it: WalkingTours micro-batches train the representation only);
the check is that every term went down. Evaluation: results.json of launch/evaluate.py, with the
comparisons the project claims (EgoAgent vs zero-velocity MPJPE, vs representation-only
retrieval Top-1, overall and by camera rotation between I_t and I_t+1, with the direction
accuracy). A failed check is printed as such; with --strict it also makes the exit
status 1 (the demo itself reports and goes on).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from megatron_ego.cli_help import make_parser

TERMS = ("loss_represent", "loss_predict", "loss_act")
WINDOW = 20


def loss_trend(metrics_path: Path, window: int = WINDOW) -> dict[str, tuple[float, float]]:
    """{term: (mean of its first `window` values, mean of its last `window`)}."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    trend = {}
    for term in TERMS:
        values = [r[term] for r in sorted(rows, key=lambda r: r["step"]) if term in r]
        if len(values) >= 2 * window:
            trend[term] = (sum(values[:window]) / window, sum(values[-window:]) / window)
    return trend


def _print_motion(retrieval: dict) -> None:
    """Retrieval Top-1 by camera rotation between I_t and I_t+1, and direction accuracy."""
    ego, rep = retrieval.get("egoagent", {}), retrieval.get("representation_only", {})
    if "top1_rot_ge10" not in ego:
        return

    def cell(metrics: dict, key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{value:.2f}"

    print(f"\n{'retrieval by camera rotation':<32}{'queries':>9}{'transitions':>13}"
          f"{'EgoAgent':>10}{'repr. only':>12}")
    for name, label in (("lt2", "< 2 deg"), ("2to10", "2-10 deg"), ("ge10", ">= 10 deg")):
        print(f"{'top-1 %, ' + label:<32}{ego.get(f'num_queries_rot_{name}', 0):>9}"
              f"{ego.get(f'num_transitions_rot_{name}', 0):>13}"
              f"{cell(ego, f'top1_rot_{name}'):>10}{cell(rep, f'top1_rot_{name}'):>12}")
    for key, label in (("direction_accuracy", "direction %, all"),
                       ("direction_accuracy_rot_ge10", "direction %, >= 10 deg")):
        print(f"{label:<32}{'':>22}{cell(ego, key):>10}{cell(rep, key):>12}")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--run", default="runs/demo", help="the demo's run folder")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a loss term did not go down")
    args = parser.parse_args(argv)
    run = Path(args.run)
    trend = loss_trend(run / "metrics.jsonl")
    ok = bool(trend) and all(last < first for first, last in trend.values())
    print(f"\n== demo summary ({run})")
    print(f"{'training loss':<28}{'first 20 steps':>16}{'last 20 steps':>16}")
    for term, (first, last) in trend.items():
        print(f"{term:<28}{first:>16.4f}{last:>16.4f}   {'down' if last < first else 'NOT DOWN'}")
    results_path = run / "eval" / "results.json"
    if results_path.is_file():
        res = json.loads(results_path.read_text())
        print(f"\n{'evaluation':<44}{'value':>10}")
        rows = [
            ("k-NN top-1 % (demo ImageFolder)", res.get("knn", {}).get("egoagent", {}).get("top1")),
            ("retrieval top-1 %, EgoAgent", res.get("retrieval", {}).get("egoagent", {}).get("top1")),
            ("retrieval top-1 %, representation only",
             res.get("retrieval", {}).get("representation_only", {}).get("top1")),
            ("retrieval mAP %, EgoAgent", res.get("retrieval", {}).get("egoagent", {}).get("map")),
            ("MPJPE cm @30fps, EgoAgent",
             res.get("motion", {}).get("egoagent", {}).get("mpjpe_30fps")),
            ("MPJPE cm @30fps, zero velocity",
             res.get("motion", {}).get("zero_velocity", {}).get("mpjpe_30fps")),
            ("MPJPE cm @30fps, constant velocity",
             res.get("motion", {}).get("constant_velocity", {}).get("mpjpe_30fps")),
        ]
        for name, value in rows:
            print(f"{name:<44}{'n/a' if value is None else f'{value:.2f}':>10}")
        _print_motion(res.get("retrieval", {}))
        ego, zero = rows[4][1], rows[5][1]
        if ego is not None and zero is not None:
            print(f"act: EgoAgent {'beats' if ego < zero else 'does NOT beat'} zero velocity")
        ego, rep = rows[1][1], rows[2][1]
        if ego is not None and rep is not None:
            print(f"predict: EgoAgent {'beats' if ego > rep else 'does NOT beat'} "
                  "representation-only retrieval")
    if ok:
        print("check passed: every loss term went down over the run")
    else:
        print("CHECK FAILED: a loss term did not go down over the run (see above)")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
