"""The table `make demo` ends with: what the run measured, and its own checks.

    python -m megatron_ego.eval.demo_summary --run runs/demo

Training: each loss term's mean over the first and the last 20 optimizer steps (a term counts
only on the steps that trained it: WalkingTours micro-batches train the representation only);
the check is that every term went down. A term that did not is reported as "rose", and the check
fails unless the run's config declares it allowed to rise (`loss.may_rise`, with the reason in
`loss.may_rise_reason`, printed beside it). Evaluation: results.json of launch/evaluate.py, with the
comparisons the project claims (EgoAgent vs zero-velocity MPJPE, vs representation-only
retrieval Top-1, overall and by camera rotation between I_t and I_t+1, with the direction
accuracy), and one line per input control (eval/controls.py: shuffled, zero and next-step actions
for predict, shuffled and no images for act) saying whether the input matters. A failed check
is printed as such; with --strict it also makes the exit status 1 (the demo itself reports and
goes on).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from megatron_ego.cli_help import make_parser
from megatron_ego.config import LOSS_TERMS
from megatron_ego.eval.controls import matters

WINDOW = 20


def allowed_rises(run: Path) -> tuple[set[str], str]:
    """(the terms run/config.yaml declares as allowed to rise, its reason): loss.may_rise and
    loss.may_rise_reason; nothing for a run without a readable config."""
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return set(), ""
    loss = cfg.get("loss") or {}
    return set(loss.get("may_rise") or ()), str(loss.get("may_rise_reason") or "")


def verdict(term: str, first: float, last: float, allowed: set[str]) -> tuple[str, bool]:
    """('down', passed), ('rose', passed: declared as allowed to rise) or ('ROSE', failed)."""
    if last < first:
        return "down", True
    return ("rose", True) if term in allowed else ("ROSE", False)


def loss_trend(metrics_path: Path, window: int = WINDOW) -> dict[str, tuple[float, float]]:
    """{term: (mean of its first `window` values, mean of its last `window`)}."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    trend = {}
    for term in LOSS_TERMS:
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


CONTROL_LINES = (  # (task, method, delta metric, label, what, unit)
    ("retrieval", "egoagent_shuffled_actions", "top1_rot_ge10", "predict, shuffled actions",
     "actions", "points of Top-1 >= 10 deg, true - control"),
    ("retrieval", "egoagent_zero_actions", "top1_rot_ge10", "predict, zero actions",
     "actions", "points of Top-1 >= 10 deg, true - control"),
    ("retrieval", "egoagent_next_actions", "top1_rot_ge10", "predict, next-step actions",
     "actions", "points of Top-1 >= 10 deg, true - control"),
    ("motion", "egoagent_shuffled_images", "mpjpe_30fps", "act, shuffled images", "images",
     "cm of MPJPE, control - true"),
    ("motion", "egoagent_no_images", "mpjpe_30fps", "act, no images", "images",
     "cm of MPJPE, control - true"),
)


def control_lines(results: dict) -> list[str]:
    """One line per input control of eval/controls.py found in ``results``: whether the input
    matters (its 95% interval above zero), the delta and the interval."""
    lines = []
    for task, method, metric, label, what, unit in CONTROL_LINES:
        values = results.get(task, {}).get(method, {})
        delta = values.get(f"delta_{metric}")
        if delta is None:
            continue
        low, high = values.get(f"delta_{metric}_ci_low"), values.get(f"delta_{metric}_ci_high")
        answer = "yes" if matters(low) else "no"
        lines.append(f"{label + ':':<29}{what} matter: {answer} ({delta:+.2f} {unit}, 95% CI "
                     f"{low:.2f} to {high:.2f})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--run", default="runs/demo", help="the demo's run folder")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a loss term did not go down")
    args = parser.parse_args(argv)
    run = Path(args.run)
    trend = loss_trend(run / "metrics.jsonl")
    allowed, reason = allowed_rises(run)
    verdicts = {t: verdict(t, first, last, allowed) for t, (first, last) in trend.items()}
    ok = bool(trend) and all(passed for _, passed in verdicts.values())
    print(f"\n== demo summary ({run})")
    print(f"{'training loss':<28}{'first 20 steps':>16}{'last 20 steps':>16}")
    for term, (first, last) in trend.items():
        word, passed = verdicts[term]
        note = "" if word == "down" else "   (allowed: loss.may_rise)" if passed else \
            "   (not in loss.may_rise: the check fails)"
        print(f"{term:<28}{first:>16.4f}{last:>16.4f}   {word}{note}")
    risen = sorted(t for t, (word, passed) in verdicts.items() if word == "rose")
    if risen:
        print(f"{', '.join(risen)} may rise in this config: {reason}")
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
        controls = control_lines(res)
        if controls:
            print("\ninput controls (paired bootstrap over the val queries / clips)")
            print("\n".join(controls))
    if ok and risen:
        print(f"check passed: every loss term went down over the run, except {', '.join(risen)}, "
              "which rose as the config allows (see above)")
    elif ok:
        print("check passed: every loss term went down over the run")
    else:
        print("CHECK FAILED: a loss term rose over the run and the config does not allow it "
              "(see above)")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
