"""Evaluation report: ``results.json`` ({task: {method: {metric: value}}}) and ``results.md``.

``write_results(..., provenance=...)`` also records where the numbers came from under the
top-level key ``provenance``, one record per task (``{task: record}``, see
``megatron_ego.eval.provenance``: a report merged from several runs says which run gave which
task), and as a section of results.md; ``read_results`` returns the tasks only,
``read_provenance`` the records.

Both files are written atomically (a temporary file in the same folder, fsync, then rename), so a
reader never sees half a report. Non-finite values (e.g. a metric with no valid sample) are stored
as JSON null and shown as "n/a". Metrics split by camera motion (``top1_rot_ge10``,
``num_transitions_trans_lt5cm``, ...) get a table of their own in results.md, one row per method
and bin, and so do the controls' differences (``delta_<metric>`` with ``_ci_low``/``_ci_high``,
eval/controls.py), one row per control and metric.

Usage::

    write_results({"act": {"egoagent": {"mpjpe_30fps": 12.9}}}, "runs/eval")
    read_results("runs/eval/results.json")
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

METHODS = ("egoagent", "zero_velocity", "constant_velocity", "representation_only",
           "stage1", "random_init", "true_state", "expert")
_MOTION = ("mpjpe_30fps", "mpjve_30fps", "mpjpe_10fps", "mpjve_10fps")
_POLICY = ("success", "success_low", "success_high", "success_seed_std", "score",
           "score_seed_std")
METRICS = ("top1", "top5", "map", *_MOTION, *(f"{m}_pooled" for m in _MOTION), *_POLICY)
UNITS = {"top1": "%", "top5": "%", "map": "%",
         **{f"{m}{suffix}": "cm" if m.startswith("mpjpe") else "cm/s"
            for m in _MOTION for suffix in ("", "_pooled")},
         "direction_accuracy": "%", "direction_accuracy_rot_ge10": "%",
         **{m: "%" for m in _POLICY}, "train_score": "%"}
BINNED = re.compile(r"^(top1|map|num_queries|num_transitions)_(rot|trans)_(\w+)$")
DELTA = re.compile(r"^delta_(\w+?)(_ci_low|_ci_high)?$")  # the controls (eval/controls.py)
BIN_COLUMNS = ("num_queries", "num_transitions", "top1", "map")
MOTION_NAMES = {"rot": "rotation", "trans": "translation"}
Results = dict[str, dict[str, dict[str, float | int | None]]]
PROVENANCE = "provenance"  # the top-level key of results.json that is not a task


def _clean(results: Results) -> Results:
    """Validate the nesting and turn numbers into JSON-safe floats/ints (non-finite -> None)."""
    if not isinstance(results, dict):
        raise ValueError("results must be a dict {task: {method: {metric: value}}}")
    clean: Results = {}
    for task, methods in results.items():
        if not isinstance(task, str) or not isinstance(methods, dict):
            raise ValueError(f"results[{task!r}] must map method names to metric dicts")
        clean[task] = {}
        for method, metrics in methods.items():
            if not isinstance(method, str) or not isinstance(metrics, dict):
                raise ValueError(f"results[{task!r}][{method!r}] must map metric names to numbers")
            clean[task][method] = {}
            for metric, value in metrics.items():
                number_like = hasattr(value, "__float__") and not isinstance(value, bool)
                if value is not None and not number_like:
                    raise ValueError(
                        f"results[{task!r}][{method!r}][{metric!r}] = {value!r} is not a number"
                    )
                if isinstance(value, int) or value is None:
                    clean[task][method][str(metric)] = value
                    continue
                number = float(value)
                clean[task][method][str(metric)] = number if math.isfinite(number) else None
    return clean


def _ordered(names, known: tuple[str, ...]) -> list[str]:
    names = list(dict.fromkeys(names))
    return [n for n in known if n in names] + sorted(n for n in names if n not in known)


def _format(value: float | int | None) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.2f}"


def _binned_table(task: str, methods: dict) -> list[str]:
    """Rows (method, motion, bin) of the metrics split by camera motion; [] when there are none."""
    bins: dict[tuple[str, str], None] = {}
    for values in methods.values():
        for metric in values:
            match = BINNED.match(metric)
            if match:
                bins[(match.group(2), match.group(3))] = None
    if not bins:
        return []
    lines = [f"### {task} by camera motion between I_t and I_t+1", "",
             "| method | motion | bin | queries | transitions | top1 (%) | map (%) |",
             "|---|---|---|---|---|---|---|"]
    for method in _ordered(methods, METHODS):
        for tag, name in bins:
            row = [_format(methods[method].get(f"{c}_{tag}_{name}")) for c in BIN_COLUMNS]
            lines.append(f"| {method} | {MOTION_NAMES[tag]} | {name} | " + " | ".join(row) + " |")
    return lines + [""]


def _controls_table(task: str, methods: dict) -> list[str]:
    """Rows (control, metric) of the controls' deltas with their 95% intervals; [] when none."""
    rows = [(method, match.group(1)) for method in _ordered(methods, METHODS)
            for metric in methods[method] if (match := DELTA.match(metric)) and not match.group(2)]
    if not rows:
        return []
    lines = [f"### {task}: input controls (delta = real inputs minus control for Top-1 and "
             "direction, control minus real for MPJPE; paired bootstrap 95% interval)", "",
             "| control | metric | delta | 95% interval |", "|---|---|---|---|"]
    for method, name in rows:
        values = methods[method]
        low, high = values.get(f"delta_{name}_ci_low"), values.get(f"delta_{name}_ci_high")
        lines.append(f"| {method} | {name} | {_format(values.get(f'delta_{name}'))} | "
                     f"{_format(low)} to {_format(high)} |")
    return lines + [""]


def task_table(task: str, methods: dict) -> str:
    """One task's markdown table: methods as rows, metrics (with units) as columns, 2 decimals."""
    methods = _clean({task: methods})[task]
    metrics = _ordered([m for values in methods.values() for m in values
                        if not BINNED.match(m) and not DELTA.match(m)], METRICS)
    header = [f"{m} ({UNITS[m]})" if m in UNITS else m for m in metrics]
    lines = ["| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(metrics)]
    for method in _ordered(methods, METHODS):
        row = [_format(methods[method].get(m)) for m in metrics]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _provenance_markdown(provenance: dict) -> list[str]:
    model, data = provenance.get("model") or {}, provenance.get("data") or {}
    rows = [
        ("command", f"`{provenance.get('command', '')}`"),
        ("git commit", provenance.get("git_commit")),
        ("evaluated (UTC)", provenance.get("time_utc")),
        ("export", model.get("export")),
        ("checkpoint", f"{model.get('checkpoint')} (step {model.get('checkpoint_step')})"),
        ("weights", f"{model.get('weights')}; predict and act: {model.get('predict_act_weights')}"),
        ("val data", ", ".join(f"{k} {v}" for k, v in data.items()) if data else "none"),
        ("k-NN folders", ", ".join(f"{k} {v}" for k, v in (provenance.get("knn") or {}).items())
         or "none"),
    ]
    policy = provenance.get("policy")
    if policy:
        demos = ", ".join(f"{d.get('path')} (sha256 {str(d.get('manifest_sha256', ''))[:12]})"
                          for d in policy.get("demos") or [])
        rows += [("policy demonstrations", demos),
                 ("policy baselines", f"stage 1: {policy.get('stage1_export') or 'not given'}; "
                  f"random init seed {policy.get('random_init_seed')}"),
                 ("policy training", f"{policy.get('training_seeds')} seeds, BC {policy.get('bc')}, "
                  f"success at scaled success >= {policy.get('success_threshold')}; "
                  f"{policy.get('simulator')}")]
    lines = ["| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return [*lines, ""]


def results_markdown(results: Results, provenance: dict | None = None) -> str:
    """One markdown table per task (metrics split by camera motion in a second table per
    task), then where the numbers came from (when given)."""
    lines = ["# Evaluation results", ""]
    for task, methods in results.items():
        lines += [f"## {task}", "", task_table(task, methods), ""]
        lines += _binned_table(task, methods)
        lines += _controls_table(task, methods)
    if provenance:
        lines += ["## Provenance", ""]
        records: list[tuple[list[str], dict]] = []  # tasks that share one record
        for task, record in provenance.items():
            same = [tasks for tasks, seen in records if seen == record]
            if same:
                same[0].append(task)
            else:
                records.append(([task], record))
        for tasks, record in records:
            lines += [f"Tasks {', '.join(tasks)}:", ""] + _provenance_markdown(record)
        lines += ["The export's full config is under `provenance.<task>.model.config` in "
                  "results.json.", ""]
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; a report is for everyone to read
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_results(results: Results, out_dir: str | Path,
                  provenance: dict | None = None) -> tuple[Path, Path]:
    """Write ``out_dir/results.json`` and ``out_dir/results.md``; returns both paths."""
    clean = _clean(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    record = {**({PROVENANCE: provenance} if provenance else {}), **clean}
    _write_atomic(json_path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    _write_atomic(md_path, results_markdown(clean, provenance))
    return json_path, md_path


def _load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run launch/evaluate.py first")
    return json.loads(path.read_text(encoding="utf-8"))


def read_results(path: str | Path) -> Results:
    """Load the tasks of a ``results.json`` written by ``write_results`` (no provenance)."""
    return _clean({k: v for k, v in _load(path).items() if k != PROVENANCE})


def read_provenance(path: str | Path) -> dict | None:
    """The provenance record of a ``results.json``, or None when it has none."""
    return _load(path).get(PROVENANCE)
