"""Export a training checkpoint to DIR/model.safetensors + DIR/config.yaml (for inference and eval).

    python launch/export.py --checkpoint runs/egoagent_300m --out runs/egoagent_300m/export
    python launch/export.py --checkpoint runs/x/checkpoints/step_0072000 --out exp --weights student

--checkpoint takes a run directory (its newest complete checkpoint), its checkpoints/ folder, or
one step_* folder. --weights:
- agent (default): the fp32 EMA teacher in model.safetensors (the feature branch: represent,
  k-NN, the retrieval gallery) and the student in student.safetensors (predict and act), as the
  paper splits the two networks;
- teacher: the EMA teacher only, for all three abilities;
- student: the student only (fp32 master weights consolidated from the ZeRO-2 partitions).
Load the result with `megatron_ego.inference.EgoAgent.from_pretrained(DIR)`; loading never
unpickles anything.

Exit codes (megatron_ego/runtime/exit_codes.py): 0 exported; 2 no checkpoint that verifies, or
one that does not load safely (one `error:` line); 1 a crash (its traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys

from megatron_ego.cli_help import make_parser
from megatron_ego.runtime import exit_codes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", required=True,
                        help="run directory, its checkpoints/ folder, or a checkpoints/step_* folder")
    parser.add_argument("--out", required=True, help="export folder (created; files replaced)")
    parser.add_argument("--weights", choices=("agent", "teacher", "student"), default="agent",
                        help="agent (default): teacher represents, student predicts and acts; "
                             "teacher: fp32 EMA teacher only; student: consolidated ZeRO fp32 only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from megatron_ego.export.checkpoint import checkpoint_networks, resolve_checkpoint
    from megatron_ego.export.format import STUDENT_FILE, ExportError, write_export

    try:
        folder = resolve_checkpoint(args.checkpoint)
        main = "teacher" if args.weights == "agent" else args.weights
        wanted = (main, "student") if args.weights == "agent" else (main,)
        cfg, networks = checkpoint_networks(folder, wanted)
        weights, source = networks[main]
        step = folder.name.removeprefix("step_").lstrip("0") or "0"
        meta = {"step": step, "checkpoint": str(folder)}
        student = student_meta = None
        if args.weights == "agent":
            student, student_source = networks["student"]
            student_meta = {**meta, "weights": "student", "source": student_source}
        weights_path, config_path = write_export(
            weights, cfg, args.out, {**meta, "weights": main, "source": source},
            student, student_meta,
        )
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_codes.INPUT_ERROR
    count = sum(t.numel() for t in weights.values())
    print(f"exported {main} of {folder} (step {step}; {count:,} values; from {source}) "
          f"-> {weights_path}, {config_path}")
    if student is not None:
        print(f"exported student (predict, act) from {student_meta['source']} "
              f"-> {weights_path.with_name(STUDENT_FILE)}")
    return exit_codes.FINISHED


if __name__ == "__main__":
    sys.exit(main())
