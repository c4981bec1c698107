"""Evaluate an exported EgoAgent: represent (k-NN), predict (retrieval), act (motion).

    python launch/evaluate.py --model runs/x/export --task all --out runs/x/eval \
        --data data/egoexo4d/val --knn-train imagenet100/train --knn-val imagenet100/val
    torchrun --standalone --nproc_per_node 8 launch/evaluate.py --model runs/x/export \
        --task retrieval --out runs/x/eval --data data/egoexo4d/val --batch-size 64

Tasks:
  knn        k-NN top-1/top-5 on an ImageFolder train/val pair (--knn-train, --knn-val); features
             are cached in OUT/features/ and reused while the model and image lists are unchanged.
  retrieval  future-state retrieval Top-1/mAP on preprocessed val clips (--data), with the
             representation-only baseline and the action controls: the same queries with
             another clip's actions (egoagent_shuffled_actions), all-invisible poses
             (egoagent_zero_actions) and A_t+1 in place of A_t (egoagent_next_actions), each
             with delta_* = true minus control and its paired bootstrap 95% interval.
  motion     MPJPE/MPJVE at 30 and 10 fps of the 15 poses after the first 5 (--data), with the
             zero- and constant-velocity baselines; 10 fps scores clip frames 7, 10, .., 19;
             averaged per sample, and pooled over all visible joints (*_pooled); and the image
             controls: another clip's frames (egoagent_shuffled_images) and one constant frame
             (egoagent_no_images), delta_mpjpe_30fps = control minus EgoAgent (cm).
             --no-controls skips the controls (megatron_ego/eval/controls.py).
  The paper's names work too: represent (knn), predict (retrieval), act (motion).
  all        every task whose inputs are given (k-NN is skipped without --knn-train/--knn-val).
--data defaults to the val split next to the training data of the model's config
(data.egoexo4d_path with its last folder 'train' replaced by 'val'), when that exists.

Writes OUT/results.json ({task: {method: {metric: value}}}, merged with an existing one, and
"provenance": the command, git commit, export, checkpoint step, export config and data manifest),
OUT/results.md (the same as tables) and PNG figures under OUT/figures/, and adds the metrics to
the run's TensorBoard (--tensorboard). Under torchrun every rank takes a block of the
images and clips; rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from megatron_ego.cli_help import make_parser

TASKS = ("knn", "retrieval", "motion")
PAPER_NAMES = {"represent": "knn", "predict": "retrieval", "act": "motion"}
"""The paper's names of the three tasks, accepted by --task (results keep the names above)."""
log = logging.getLogger("evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = make_parser(__doc__)
    p.add_argument("--model", required=True, help="export folder (model.safetensors, config.yaml)")
    p.add_argument("--task", choices=(*TASKS, *PAPER_NAMES, "all"), default="all",
                   help="knn (= represent; needs --knn-train/--knn-val), retrieval (= predict), "
                        "motion (= act) (both need --data or the val split beside the training "
                        "data); all: every task whose inputs are given")
    p.add_argument("--out", required=True, help="folder for results.json/.md, figures, caches")
    p.add_argument("--knn-train", "--knn_train", dest="knn_train", default=None,
                   help="ImageFolder train split (root/<class>/<image>) for k-NN")
    p.add_argument("--knn-val", "--knn_val", dest="knn_val", default=None,
                   help="ImageFolder val split for k-NN (same class folders)")
    p.add_argument("--data", default=None,
                   help="preprocessed Ego-Exo4D val clips (python -m preprocess.egoexo4d --split val)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=64,
                   help="images (k-NN, gallery) or clips per forward pass and rank")
    p.add_argument("--max-clips", "--max_clips", dest="max_clips", type=int, default=None,
                   help="evaluate this many clips spread evenly over the val split (default: all)")
    p.add_argument("--workers", type=int, default=4, help="decoding processes per rank (0: none)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when available (rank r takes GPU LOCAL_RANK), else CPU")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16 autocast on CUDA (weights stay fp32)")
    p.add_argument("--figures", type=int, default=3, help="example figures per task (0: none)")
    p.add_argument("--tensorboard", default="auto",
                   help="where to add the metrics as eval/<task>/<method>/<metric> scalars at the "
                        "checkpoint's step: auto (the run's tensorboard/ folder, when the export's "
                        "checkpoint run is here), none, or a folder")
    p.add_argument("--no-controls", "--no_controls", dest="controls", action="store_false",
                   help="skip the input controls (retrieval with shuffled, zero and next-step "
                        "actions; motion with shuffled and no images: megatron_ego/eval/"
                        "controls.py), which cost three more predict passes and two more act "
                        "rollouts")
    p.add_argument("--knn-k", type=int, default=20, help="neighbours of the k-NN vote (DINO: 20)")
    p.add_argument("--knn-temperature", type=float, default=0.07, help="k-NN vote temperature")
    args = p.parse_args(argv)
    args.task = PAPER_NAMES.get(args.task, args.task)
    if args.batch_size < 1 or args.workers < 0 or (args.max_clips is not None and args.max_clips < 1):
        p.error("--batch-size and --max-clips must be >= 1 and --workers >= 0")
    return args


def _require_dir(path: str | None, flag: str, hint: str) -> None:
    if path is not None and not Path(path).is_dir():
        raise FileNotFoundError(f"{flag} {path} does not exist: {hint}")


def _default_data(model_dir: str) -> str | None:
    """The val split beside the config's training split, when it exists."""
    from megatron_ego.config import load_config

    config = Path(model_dir) / "config.yaml"
    if not config.is_file():
        return None
    train = Path(load_config(str(config)).data.egoexo4d_path)
    val = train.parent / "val"
    return str(val) if train.name == "train" and (val / "manifest.json").is_file() else None


def plan_tasks(args: argparse.Namespace) -> list[str]:
    """Tasks to run, after checking that their inputs are given and exist."""
    knn_given = args.knn_train is not None or args.knn_val is not None
    if args.task in ("knn", "all") and knn_given and (args.knn_train is None or args.knn_val is None):
        raise ValueError("k-NN needs both --knn-train and --knn-val (ImageFolder splits)")
    if args.task == "knn" and not knn_given:
        raise ValueError("--task knn needs --knn-train and --knn-val (ImageFolder splits)")
    hint = "pass an ImageFolder split (root/<class>/<image>)"
    _require_dir(args.knn_train, "--knn-train", hint)
    _require_dir(args.knn_val, "--knn-val", hint)
    if args.data is None and args.task != "knn":
        args.data = _default_data(args.model)
    _require_dir(args.data, "--data", "preprocess the val split first (python -m "
                 "preprocess.egoexo4d --root RAW --split val --out DIR)")
    wanted = TASKS if args.task == "all" else (args.task,)
    tasks = [t for t in wanted if (t == "knn" and knn_given) or (t != "knn" and args.data)]
    missing = [t for t in wanted if t not in tasks]
    if args.task != "all" and missing:
        raise ValueError(f"--task {args.task} needs --data (preprocessed Ego-Exo4D val clips)")
    if not tasks:
        raise ValueError("nothing to evaluate: pass --data (retrieval, motion) and/or "
                         "--knn-train/--knn-val (k-NN)")
    for task in missing:
        log.warning("skipping %s: its inputs were not given", task)
    return tasks


def _to_tensorboard(where: str, metadata: dict[str, str], results: dict) -> None:
    """Eval scalars into the run's TensorBoard (or `--tensorboard DIR`), at the checkpoint step."""
    from megatron_ego.eval.tensorboard import run_tensorboard_dir, write_eval_scalars

    if where == "none":
        return
    log_dir = run_tensorboard_dir(metadata) if where == "auto" else Path(where)
    step = metadata.get("step", "")
    if log_dir is None or not step.isdigit():
        log.info("no TensorBoard for the eval metrics: the export's checkpoint run folder is "
                 "not here (pass --tensorboard DIR)")
        return
    count = write_eval_scalars(results, log_dir, int(step))
    log.info("wrote %d eval scalars to %s at step %s", count, log_dir, step)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Load the model, run the planned tasks, write the report (rank 0). Returns the results."""
    from megatron_ego.config_io import to_dict
    from megatron_ego.eval.provenance import collect_provenance
    from megatron_ego.eval.report import read_provenance, read_results, task_table, write_results
    from megatron_ego.eval.run_knn import run_knn
    from megatron_ego.eval.run_motion import run_motion
    from megatron_ego.eval.run_retrieval import run_retrieval
    from megatron_ego.inference import EgoAgent
    from megatron_ego.runtime.processes import join_processes

    tasks = plan_tasks(args)
    ranks = join_processes(None if args.device == "auto" else args.device)
    agent = EgoAgent.from_pretrained(args.model, device=ranks.device, precision=args.precision)
    common = dict(batch_size=args.batch_size, workers=args.workers)
    clips = dict(max_clips=args.max_clips, num_figures=args.figures, controls=args.controls)
    results = {}
    for task in tasks:
        start = time.perf_counter()
        if task == "knn":
            results[task] = run_knn(agent, args.knn_train, args.knn_val, args.out, ranks,
                                    args.model, k=args.knn_k, temperature=args.knn_temperature,
                                    **common)
        elif task == "retrieval":
            results[task] = run_retrieval(agent, args.data, args.out, ranks, **common, **clips)
        else:
            results[task] = run_motion(agent, args.data, args.out, ranks, **common, **clips)
        if ranks.is_main:
            log.info("%s done in %.1f s:\n%s", task, time.perf_counter() - start,
                     task_table(task, results[task]))
    if ranks.is_main:
        previous = Path(args.out) / "results.json"
        merged = read_results(previous) if previous.is_file() else {}
        merged.update(results)
        record = collect_provenance(
            args.model, agent.metadata, to_dict(agent.cfg), args.data,
            (args.knn_train, args.knn_val),
            ["launch/evaluate.py", *(sys.argv[1:] if argv is None else argv)])
        provenance = (read_provenance(previous) if previous.is_file() else None) or {}
        provenance = {task: provenance[task] for task in merged if task in provenance}
        provenance.update({task: record for task in results})
        json_path, md_path = write_results(merged, args.out, provenance)
        _to_tensorboard(args.tensorboard, agent.metadata, results)
        print(md_path.read_text())
        log.info("wrote %s and %s", json_path, md_path)
    ranks.barrier()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    from megatron_ego.config import ConfigError
    from megatron_ego.data.indexed import IndexedDataError
    from megatron_ego.export.format import ExportError

    try:
        run(args, argv)
    except (FileNotFoundError, ValueError, ConfigError, ExportError, IndexedDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
