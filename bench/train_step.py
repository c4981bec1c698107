"""Training throughput of a config on the present device: clips/s, tokens/s, TFLOP/s, MFU.

    python bench/train_step.py --config configs/egoagent_300m.yaml --micro-batch 32 --steps 30
    python bench/train_step.py --config configs/tiny_cpu.yaml --micro-batch 4 --steps 5   # CPU
    python bench/train_step.py --config configs/egoagent_300m.yaml --count-ops \
        --model.recompute=true --model.hidden_size=64 --model.num_attention_heads=8 \
        --model.head_hidden_dim=128 --model.head_bottleneck_dim=64 --model.head_out_dim=256

--count-ops prints the leaf non-view aten operators of one trainer step (after --warmup steps,
micro-batch 1 unless given, fp32, local spec: the host-op count of issue 15), counted with the
torch profiler on CPU, and exits; the rest of the options are ignored except the overrides.

Runs the real trainer step (DeepSpeed ZeRO-2 engine, fp32 EMA teacher, the three losses) on one
process, on generated Ego-Exo4D-shaped micro-batches kept on the device, so it measures the model
and the optimizer, not the data loader (bench/loader.py measures that). Untimed warm-up steps come
first; the reported figures are medians over the timed steps (wall time, and the process's CPU
time: with OMP_NUM_THREADS=1 the latter hardly moves when other jobs share the machine). FLOPs
per clip are the documented count of megatron_ego/training/flops.py; MFU is against the device's
dense peak for the precision. Prints one JSON line (and writes it to --json when given); exits 3
on CUDA out-of-memory so a caller can retry with a smaller batch.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from megatron_ego.cli_help import make_parser


def synthetic_batch(cfg, b: int, device: torch.device, seed: int = 0) -> dict:
    """An Ego-Exo4D micro-batch with the loader's shapes (data/loader.py contract)."""
    c, d = cfg.model, cfg.data
    g = torch.Generator().manual_seed(seed)
    poses = torch.randn(b, c.num_steps, 4, c.poses_per_step, c.num_joints, generator=g) * 0.3
    poses[:, :, 3] = (torch.rand(poses[:, :, 3].shape, generator=g) > 0.1).float()
    batch = {
        "frames": torch.randn(b, c.num_steps, 3, c.image_size, c.image_size, generator=g),
        "poses": poses,
        "global_crops": torch.randn(b, d.num_global_crops, 3, c.image_size, c.image_size,
                                    generator=g),
        "local_crops": torch.randn(b, d.num_local_crops, 3, c.local_crop_size, c.local_crop_size,
                                   generator=g),
    }
    return {"source": "egoexo4d", **{k: v.to(device) for k, v in batch.items()}}


def profile_steps(trainer, loader, steps: int, on_gpu: bool) -> None:
    """torch.profiler over `steps` trainer steps: top operators by device and by CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step(loader)
        if on_gpu:
            torch.cuda.synchronize()
    table = prof.key_averages()
    if on_gpu:
        print(table.table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    print(table.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))


# Run no kernel and allocate nothing: type queries, and a view whose schema does not say so.
_NO_WORK = {"aten::result_type", "aten::_has_compatible_shallow_copy_type", "aten::_unsafe_view"}


def view_op_names() -> set[str]:
    """aten operators whose every output aliases an input (views, and no-op `to`/`contiguous`),
    and the few that do no work (_NO_WORK)."""
    names = set(_NO_WORK)
    for schema in torch._C._jit_get_all_schemas():
        rets = schema.returns
        if rets and all(r.alias_info is not None and not r.alias_info.is_write for r in rets):
            names.add(schema.name)
    return names


def count_ops(trainer, loader, steps: int = 1) -> dict:
    """Leaf non-view aten operators per trainer step on CPU (torch.profiler, `steps` steps).

    A leaf is an aten event with no aten event under it (what reaches a kernel or the
    allocator); views and aliasing no-ops are left out, so what is counted is the work the host
    issues one operator at a time.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.train_step(loader)
    views = view_op_names()
    by_name: dict[str, int] = {}
    for event in prof.events():
        if not event.name.startswith("aten::") or event.name in views:
            continue
        if any(c.name.startswith("aten::") for c in event.cpu_children):
            continue
        by_name[event.name] = by_name.get(event.name, 0) + 1
    total = sum(by_name.values())
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:15]
    return {"leaf_ops_per_step": total / steps, "steps": steps,
            "top": {k: v / steps for k, v in top}}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--config", required=True, help="YAML run config (configs/*.yaml)")
    parser.add_argument("--ds_config", default="configs/zero2.json",
                        help="DeepSpeed JSON (its 'auto' values are filled from the config)")
    parser.add_argument("--micro-batch", type=int, default=8,
                        help="clips per micro-batch (the global batch is this times the ranks)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default=None,
                        help="bf16/fp16 need a GPU; default: the config's run.precision")
    parser.add_argument("--json", default=None, help="also write the result line here")
    parser.add_argument("--profile", type=int, default=0,
                        help="after the timed steps, profile this many steps and print the top "
                             "operators by device time and by CPU time")
    parser.add_argument("--count-ops", action="store_true",
                        help="CPU: print leaf non-view aten ops per trainer step (after --warmup "
                             "steps; micro-batch 1, fp32, local spec unless overridden) and exit")
    parser.add_argument("--sync-check", action="store_true",
                        help="GPU: run one more step under torch.cuda.set_sync_debug_mode('warn') "
                             "and fail if any host-device synchronisation comes from "
                             "megatron_ego (DeepSpeed's optimizer step has its own: counted)")
    args, overrides = parser.parse_known_args(argv)
    if args.count_ops:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # host ops are counted on CPU
        if "--micro-batch" not in " ".join(argv if argv is not None else sys.argv):
            args.micro_batch = 1
        args.precision = args.precision or "fp32"
        args.steps, args.warmup = 0, min(args.warmup, 2)
        overrides = ["--model.transformer_impl=local", *overrides]

    from megatron_ego.config import load_config
    from megatron_ego.training.distributed import init_distributed
    from megatron_ego.training.flops import clip_flops
    from megatron_ego.training.trainer import Trainer

    dist_info = init_distributed()
    total = args.warmup + args.steps
    mb = args.micro_batch
    extra = [f"--run.micro_batch_size={mb}", f"--run.global_batch_size={mb * dist_info.world_size}",
             f"--run.output_dir={tempfile.mkdtemp(prefix='bench_train_step_')}",
             f"--schedule.train_iters={max(total, 10)}", "--schedule.warmup_iters=1",
             "--data.walking_tours_ratio=0"]
    if args.precision:
        extra.append(f"--run.precision={args.precision}")
    cfg = load_config(args.config, [*extra, *overrides])
    trainer = Trainer(cfg, args.ds_config, dist_info, resume="none")
    loader = itertools.repeat(synthetic_batch(cfg, mb, dist_info.device))
    on_gpu = dist_info.device.type == "cuda"
    if args.count_ops:
        for _ in range(args.warmup):
            trainer.train_step(loader)
        result = {"config": args.config, "overrides": overrides, "micro_batch": mb,
                  "precision": cfg.run.precision, "num_layers": cfg.model.num_layers,
                  "hidden_size": cfg.model.hidden_size,
                  "layer_spec": trainer.engine.module.backbone.spec_name,
                  **count_ops(trainer, loader)}
        print(json.dumps(result), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")
        return 0
    times, cpu_times, losses = [], [], []
    try:
        for i in range(total):
            if on_gpu:
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            result = trainer.train_step(loader)
            if on_gpu:
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
            losses.append(float(result.terms.means()["loss"]))
    except torch.cuda.OutOfMemoryError as e:
        print(json.dumps({"config": args.config, "micro_batch": mb, "error": "oom",
                          "detail": str(e).splitlines()[0]}), flush=True)
        return 3
    if args.profile:
        profile_steps(trainer, loader, args.profile, on_gpu)
    syncs = sync_check(trainer, loader) if args.sync_check and on_gpu else None
    flops = clip_flops(cfg, trainer.engine.module)
    step = statistics.median(times)
    clips = mb * dist_info.world_size / step
    result = {
        "config": args.config,
        "device": trainer.device_name,
        "precision": cfg.run.precision,
        "layer_spec": trainer.engine.module.backbone.spec_name,
        "micro_batch": mb,
        "world_size": dist_info.world_size,
        "recompute": cfg.model.recompute,
        "compile_elementwise": cfg.model.compile_elementwise,
        "fp8": cfg.model.fp8,
        "train_flops_per_clip": flops["train"],
        "step_s_median": step,
        "step_cpu_s_median": statistics.median(cpu_times),
        "clips_per_s": clips,
        "tokens_per_s": clips * flops["tokens"],
        "tflops_per_device": clips * flops["train"] / dist_info.world_size / 1e12,
        "losses_finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    if trainer.peak_tflops:
        result["mfu"] = result["tflops_per_device"] / trainer.peak_tflops
    if on_gpu:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if syncs is not None:
        result.update(syncs)
    line = json.dumps(result)
    if dist_info.is_main:
        print(line, flush=True)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "a") as f:
                f.write(line + "\n")
    if syncs is not None and syncs["syncs_ours"]:
        return 1
    return 0 if result["losses_finite"] else 1


def sync_check(trainer, loader) -> dict:
    """One trainer step under CUDA's sync debug mode: where each synchronisation came from.

    "error" mode cannot be used around the whole step: DeepSpeed's ZeRO-2 step reads its
    overflow flag on the host (stage_1_and_2.py) and its grad-norm check; those are counted as
    `syncs_other`, ours (any file of megatron_ego) as `syncs_ours`, which must be empty.
    """
    import warnings

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train_step(loader)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    found = [f"{os.path.relpath(w.filename)}:{w.lineno}" for w in caught
             if "synchroniz" in str(w.message)]
    ours = [f for f in found if f.startswith("megatron_ego")]
    return {"syncs_ours": ours, "syncs_other": len(found) - len(ours)}


if __name__ == "__main__":
    sys.exit(main())
