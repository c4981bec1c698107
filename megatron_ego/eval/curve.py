"""A learning curve from evaluated checkpoints (launch/curve.sh): one row per run and step.

    python -m megatron_ego.eval.curve runs/sweep/lc0 runs/sweep/lc1 --figure curve.png

Reads RUN/curve/step_N/eval/results.json (launch/evaluate.py with the input controls) and
RUN/metrics.jsonl; prints a markdown table of, per step: Top-1 on turning queries (camera turns
>= 10 degrees between I_t and I_t+1) with the true, shuffled, zero and next-step actions; true
minus shuffled with its paired 95% interval; the direction accuracy on turning queries; k-NN
top-1; MPJPE against zero velocity; overall Top-1 against copying the input frame
(representation only); and the DINO prediction term (mean of the 20 logged values up to the
step). ``--figure`` draws true minus shuffled and the direction accuracy against the step.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from megatron_ego.cli_help import make_parser

STEP_DIR = re.compile(r"^step_(\d+)$")
COLUMNS = ("run", "step", "Top-1 >= 10 deg true / shuffled / zero / next",
           "true - shuffled (95% CI)", "direction >= 10 deg", "k-NN", "MPJPE (zero velocity)",
           "Top-1 all, agent / copy", "loss_predict")


def _get(results: dict, task: str, method: str, metric: str) -> float | None:
    return ((results.get(task) or {}).get(method) or {}).get(metric)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def loss_at(metrics: list[dict], step: int, term: str = "loss_predict", window: int = 20
            ) -> float | None:
    """Mean of the last ``window`` logged values of ``term`` at steps <= ``step``."""
    values = [r[term] for r in metrics if r.get("step", 0) <= step and term in r]
    return sum(values[-window:]) / len(values[-window:]) if values else None


def curve_rows(run: Path) -> list[dict]:
    """One dict per evaluated step of ``run`` (sorted by step)."""
    metrics_path = run / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] \
        if metrics_path.is_file() else []
    rows = []
    for folder in sorted((run / "curve").glob("step_*")):
        match, results_path = STEP_DIR.match(folder.name), folder / "eval" / "results.json"
        if not match or not results_path.is_file():
            continue
        step, res = int(match.group(1)), json.loads(results_path.read_text())
        top1 = {name: _get(res, "retrieval", method, "top1_rot_ge10") for name, method in (
            ("true", "egoagent"), ("shuffled", "egoagent_shuffled_actions"),
            ("zero", "egoagent_zero_actions"), ("next", "egoagent_next_actions"))}
        shuffled = (res.get("retrieval") or {}).get("egoagent_shuffled_actions") or {}
        rows.append({
            "run": run.name, "step": step, "top1_ge10": top1,
            "delta": tuple(shuffled.get(f"delta_top1_rot_ge10{s}") for s in ("", "_ci_low",
                                                                              "_ci_high")),
            "direction_ge10": _get(res, "retrieval", "egoagent", "direction_accuracy_rot_ge10"),
            "knn": _get(res, "knn", "egoagent", "top1"),
            "mpjpe": (_get(res, "motion", "egoagent", "mpjpe_30fps"),
                      _get(res, "motion", "zero_velocity", "mpjpe_30fps")),
            "top1": (_get(res, "retrieval", "egoagent", "top1"),
                     _get(res, "retrieval", "representation_only", "top1")),
            "loss_predict": loss_at(metrics, step)})
    return sorted(rows, key=lambda r: r["step"])


def markdown(rows: list[dict]) -> str:
    """The table of ``curve_rows`` (several runs concatenated)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        delta, low, high = r["delta"]
        cells = [r["run"], str(r["step"]), " / ".join(_fmt(v) for v in r["top1_ge10"].values()),
                 f"{_fmt(delta)} ({_fmt(low)} to {_fmt(high)})", _fmt(r["direction_ge10"]),
                 _fmt(r["knn"]), f"{_fmt(r['mpjpe'][0])} ({_fmt(r['mpjpe'][1])})",
                 f"{_fmt(r['top1'][0])} / {_fmt(r['top1'][1])}", _fmt(r["loss_predict"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Two panels against the step, one line per run: true minus shuffled Top-1 on turning
    queries with its 95% interval, and the direction accuracy on turning queries."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.0, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    for k, run in enumerate(dict.fromkeys(r["run"] for r in rows)):
        mine = [r for r in rows if r["run"] == run and r["delta"][0] is not None]
        steps = [r["step"] for r in mine]
        delta = [r["delta"][0] for r in mine]
        errors = [[d - r["delta"][1] for d, r in zip(delta, mine)],
                  [r["delta"][2] - d for d, r in zip(delta, mine)]]
        left.errorbar(steps, delta, yerr=errors, marker="o", capsize=3, color=f"C{k}", label=run)
        right.plot(steps, [r["direction_ge10"] for r in mine], marker="o", color=f"C{k}", label=run)
    left.axhline(0.0, color="grey", lw=0.8)
    left.set(xlabel="stage-2 step", ylabel="points",
             title="Top-1 >= 10 deg: true - shuffled actions (95% CI)")
    right.axhline(60.0, color="grey", lw=0.8, ls="--")
    right.set(xlabel="stage-2 step", ylabel="%", title="direction accuracy, >= 10 deg")
    for ax in (left, right):
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("runs", nargs="+", help="run folders with curve/step_*/eval/results.json")
    parser.add_argument("--figure", default=None, help="PNG to draw the curve into")
    args = parser.parse_args(argv)
    rows = [row for run in args.runs for row in curve_rows(Path(run))]
    if not rows:
        print("error: no evaluated steps under RUN/curve/step_*/eval/results.json: run "
              "launch/curve.sh first", file=sys.stderr)
        return 2
    print(markdown(rows))
    if args.figure:
        print(f"figure: {plot(rows, Path(args.figure))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
