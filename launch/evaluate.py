"""Evaluate an exported EgoAgent: represent (k-NN), predict (retrieval), act (motion).

    python launch/evaluate.py --model runs/x/export --task all --out runs/x/eval \
        --data data/egoexo4d/val --knn-train data/imagenet100/train --knn-val data/imagenet100/val
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
  policy     TriFinger policy learning (the paper's appendix, Table 5) on the demonstration sets of
             --policy-demos (python -m preprocess.trifinger_demos): behaviour cloning of a 3-layer
             MLP on the frozen features and the fingertips, 3 training seeds, rolled out in the
             simulator from the held-out test states; success rate (Wilson 95% interval) and the
             benchmark's mean scaled success, against a randomly initialised encoder, the
             stage-1 export (--policy-stage1), the true cube state and the expert. Results under
             policy_reach_cube / policy_move_cube.
  The paper's names work too: represent (knn), predict (retrieval), act (motion).
  all        every task whose inputs are given (k-NN is skipped without --knn-train/--knn-val,
             policy without --policy-demos).
--data defaults to the val split next to the training data of the model's config
(data.egoexo4d_path with its last folder 'train' replaced by 'val'), when that exists.

Writes OUT/results.json ({task: {method: {metric: value}}}, merged with an existing one, and
"provenance": the command, git commit, export, checkpoint step, export config and data manifest),
OUT/results.md (the same as tables) and PNG figures under OUT/figures/, and adds the metrics to
the run's TensorBoard (--tensorboard). Under torchrun every rank takes a block of the
images and clips; rank 0 writes the outputs.

Exit codes (megatron_ego/runtime/exit_codes.py): 0 done; 2 bad input (a missing or damaged
folder, export or dataset: one `error:` line); 1 a crash (its traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from megatron_ego.cli_help import make_parser
from megatron_ego.runtime import exit_codes

TASKS = ("knn", "retrieval", "motion", "policy")
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
    p.add_argument("--policy-demos", nargs="+", default=None, metavar="DIR",
                   help="policy: demonstration folders (python -m preprocess.trifinger_demos), "
                        "e.g. one for reach_cube and one for move_cube")
    p.add_argument("--policy-stage1", default=None, metavar="EXPORT",
                   help="policy: the stage-1 (represent-only) export, a baseline (launch/export.py "
                        "--checkpoint RUN/stage1 --out DIR)")
    p.add_argument("--policy-seeds", type=int, default=3, help="policy: BC training seeds")
    p.add_argument("--policy-epochs", type=int, default=300, help="policy: BC epochs")
    p.add_argument("--policy-hidden", type=int, default=256,
                   help="policy: MLP width (the benchmark: 2000; slower on a CPU)")
    p.add_argument("--policy-lr", type=float, default=1e-3, help="policy: AdamW learning rate")
    p.add_argument("--policy-max-test", type=int, default=None,
                   help="policy: roll out from only the first N test states (default: all)")
    p.add_argument("--success-threshold", type=float, default=0.8,
                   help="policy: an episode succeeds when its scaled success is at least this")
    p.add_argument("--check", action="store_true",
                   help="check the arguments and inputs (the model's config.yaml, the data "
                        "folders), print the tasks that would run, exit without loading the "
                        "model (launch/slurm/evaluate.sbatch runs it before srun)")
    args = p.parse_args(argv)
    args.task = PAPER_NAMES.get(args.task, args.task)
    if args.batch_size < 1 or args.workers < 0 or (args.max_clips is not None and args.max_clips < 1):
        p.error("--batch-size and --max-clips must be >= 1 and --workers >= 0")
    if min(args.policy_seeds, args.policy_epochs, args.policy_hidden) < 1 or args.policy_lr <= 0 \
            or not 0 < args.success_threshold <= 1 or (args.policy_max_test or 1) < 1:
        p.error("--policy-seeds/-epochs/-hidden/-max-test must be >= 1, --policy-lr > 0 and "
                "0 < --success-threshold <= 1")
    return args


def check(args: argparse.Namespace) -> list[str]:
    """--check: the planned tasks, after checking their inputs and the model folder's config
    (an export, or the run folder an export will be written from)."""
    if not (Path(args.model) / "config.yaml").is_file():
        raise FileNotFoundError(
            f"--model {args.model} holds no config.yaml: pass an export folder "
            "(python launch/export.py --checkpoint RUN_DIR --out DIR)")
    return plan_tasks(args)


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
    if args.task == "policy":
        return _plan_policy(args)
    hint = ("pass an ImageFolder split (root/<class>/<image>); ImageNet-100: "
            "python -m preprocess.imagenet100 --imagenet IMAGENET_ROOT --out data/imagenet100")
    _require_dir(args.knn_train, "--knn-train", hint)
    _require_dir(args.knn_val, "--knn-val", hint)
    policy = args.policy_demos is not None and args.task == "all"
    if policy:
        _plan_policy(args)
    if args.data is None and args.task != "knn":
        args.data = _default_data(args.model)
    _require_dir(args.data, "--data", "preprocess the val split first (python -m "
                 "preprocess.egoexo4d --root RAW --split val --out DIR)")
    wanted = TASKS if args.task == "all" else (args.task,)
    tasks = [t for t in wanted if (t == "knn" and knn_given) or (t == "policy" and policy)
             or (t not in ("knn", "policy") and args.data)]
    missing = [t for t in wanted if t not in tasks]
    if args.task != "all" and missing:
        raise ValueError(f"--task {args.task} needs --data (preprocessed Ego-Exo4D val clips)")
    if not tasks:
        raise ValueError("nothing to evaluate: pass --data (retrieval, motion), "
                         "--knn-train/--knn-val (k-NN) and/or --policy-demos (policy)")
    for task in missing:
        log.warning("skipping %s: its inputs were not given", task)
    return tasks


def _plan_policy(args: argparse.Namespace) -> list[str]:
    """The policy task's inputs exist (the demonstration sets are read again when it runs)."""
    if not args.policy_demos:
        raise ValueError("--task policy needs --policy-demos DIR [DIR ...] (make them with "
                         "python -m preprocess.trifinger_demos --task reach_cube --out DIR)")
    for path in args.policy_demos:
        if not (Path(path) / "manifest.json").is_file():
            raise FileNotFoundError(
                f"--policy-demos {path} holds no demonstrations: make them with `python -m "
                f"preprocess.trifinger_demos --task reach_cube --out {path}`")
    if args.policy_stage1 is not None and not (Path(args.policy_stage1) / "config.yaml").is_file():
        raise FileNotFoundError(f"--policy-stage1 {args.policy_stage1} is not an export: export "
                                "the stage-1 run with launch/export.py --checkpoint RUN/stage1 "
                                f"--out {args.policy_stage1}")
    return ["policy"]


def _policy_options(args: argparse.Namespace):
    from megatron_ego.eval.policy.bc import BCConfig
    from megatron_ego.eval.policy.run import PolicyOptions

    return PolicyOptions(
        demos=list(args.policy_demos), stage1=args.policy_stage1, seeds=args.policy_seeds,
        bc=BCConfig(hidden=args.policy_hidden, epochs=args.policy_epochs, lr=args.policy_lr),
        threshold=args.success_threshold, max_test=args.policy_max_test)


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
        elif task == "policy":
            from megatron_ego.eval.policy.run import run_policy

            if ranks.is_main:
                results.update(run_policy(agent, args.model, _policy_options(args), args.out))
        elif task == "retrieval":
            results[task] = run_retrieval(agent, args.data, args.out, ranks, **common, **clips)
        else:
            results[task] = run_motion(agent, args.data, args.out, ranks, **common, **clips)
        if ranks.is_main:
            for name in [n for n in results if n == task or n.startswith(f"{task}_")]:
                log.info("%s done in %.1f s:\n%s", name, time.perf_counter() - start,
                         task_table(name, results[name]))
    if ranks.is_main:
        previous = Path(args.out) / "results.json"
        merged = read_results(previous) if previous.is_file() else {}
        merged.update(results)
        record = collect_provenance(
            args.model, agent.metadata, to_dict(agent.cfg), args.data,
            (args.knn_train, args.knn_val),
            ["launch/evaluate.py", *(sys.argv[1:] if argv is None else argv)])
        if "policy" in tasks:
            from megatron_ego.eval.policy.run import policy_provenance

            record["policy"] = policy_provenance(_policy_options(args))
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

    if args.check:  # before the imports below: they load torch
        try:
            print(f"ok: {', '.join(check(args))} of {args.model} -> {args.out}")
        except (FileNotFoundError, ValueError, ConfigError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    from megatron_ego.data.indexed import IndexedDataError
    from megatron_ego.eval.policy.sim import SimulatorMissingError
    from megatron_ego.export.format import ExportError

    try:
        run(args, argv)
    except (FileNotFoundError, ValueError, ConfigError, ExportError, IndexedDataError,
            SimulatorMissingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_codes.INPUT_ERROR
    return exit_codes.FINISHED


if __name__ == "__main__":
    sys.exit(main())
