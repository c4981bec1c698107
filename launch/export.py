"""Export a training checkpoint to DIR/model.safetensors + DIR/config.yaml (for inference and eval).

    python launch/export.py --checkpoint runs/egoagent_300m --out runs/egoagent_300m/export
    python launch/export.py --checkpoint runs/x/checkpoints/step_0072000 --out exp --weights student

--checkpoint takes a run directory (its newest complete checkpoint), its checkpoints/ folder, or
one step_* folder. --weights teacher (default: the fp32 EMA teacher, what the benchmarks use) or
student (fp32 master weights consolidated from the ZeRO-2 partitions). Load the result with
`megatron_ego.inference.EgoAgent.from_pretrained(DIR)`; loading never unpickles anything.
"""

from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export an EgoAgent checkpoint to safetensors.")
    parser.add_argument("--checkpoint", required=True,
                        help="run directory, its checkpoints/ folder, or a checkpoints/step_* folder")
    parser.add_argument("--out", required=True, help="export folder (created; files replaced)")
    parser.add_argument("--weights", choices=("teacher", "student"), default="teacher",
                        help="teacher: fp32 EMA teacher (default); student: consolidated ZeRO fp32")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from megatron_ego.eval.export_checkpoint import checkpoint_weights, resolve_checkpoint
    from megatron_ego.eval.export_format import ExportError, write_export

    try:
        folder = resolve_checkpoint(args.checkpoint)
        cfg, weights, source = checkpoint_weights(folder, args.weights)
        step = folder.name.removeprefix("step_").lstrip("0") or "0"
        weights_path, config_path = write_export(
            weights, cfg, args.out,
            {"weights": args.weights, "step": step, "source": source, "checkpoint": str(folder)},
        )
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    count = sum(t.numel() for t in weights.values())
    print(f"exported {args.weights} of {folder} (step {step}; {count:,} values; from {source}) "
          f"-> {weights_path}, {config_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
