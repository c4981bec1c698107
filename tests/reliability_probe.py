"""Run pretraining in this process with a fault injected; print what happened as one JSON line.

Used by tests/test_reliability_input.py (in a subprocess, one rank):

    python tests/reliability_probe.py diverge ARGS...    # optim.lr forced to 1e6 after validation
    python tests/reliability_probe.py nan_teacher ARGS...  # a teacher weight set to nan, then save()
    PROBE_HOLD_S=8 python tests/reliability_probe.py hold ARGS...  # a slow start: waits 8 s
                                                        # after taking the run folder's lease
    PROBE_NAN_STEPS=3,4 python tests/reliability_probe.py nan_steps ARGS...  # the loss of those
                                                        # optimizer steps times nan

ARGS are launch/pretrain.py's. `diverge` records, for every optimizer step, whether it was skipped
and a checksum of the EMA teacher, then runs launch/pretrain.py's `run` (exit code, message).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from launch import pretrain  # noqa: E402
from megatron_ego.config import load_config  # noqa: E402
from megatron_ego.training import guards, trainer  # noqa: E402


def _teacher_sum(t: trainer.Trainer) -> float:
    return float(sum(p.double().sum() for p in t.teacher.parameters()))


def main() -> int:
    mode, argv = sys.argv[1], sys.argv[2:]
    args, overrides = pretrain.parse_args(argv)
    cfg = load_config(args.config, overrides)
    made: list[trainer.Trainer] = []
    steps: list[dict] = []
    original_init, original_record = trainer.Trainer.__init__, guards.SkippedSteps.record

    def init(self, *a, **kw):
        original_init(self, *a, **kw)
        made.append(self)
        steps.append({"step": 0, "skipped": False, "teacher": _teacher_sum(self)})

    def record(self, step, skipped, why="", records=""):
        steps.append({"step": step, "skipped": skipped, "teacher": _teacher_sum(made[0]),
                      "records": records})
        return original_record(self, step, skipped, why, records)

    trainer.Trainer.__init__, guards.SkippedSteps.record = init, record
    result: dict = {}
    if mode == "diverge":
        cfg.optim.lr = 1e6  # past validation, as a diverging run would get there
        result["rc"] = pretrain.run(cfg, args)
    elif mode == "nan_teacher":
        original_fit = trainer.Trainer.fit

        def fit(self, max_steps=None):
            state = original_fit(self, max_steps)
            with torch.no_grad():
                next(self.teacher.parameters()).view(-1)[0] = float("nan")
            self.save()
            return state

        trainer.Trainer.fit = fit
        result["rc"] = pretrain.run(cfg, args)
    elif mode == "hold":
        original_fit = trainer.Trainer.fit

        def fit(self, max_steps=None):
            time.sleep(float(os.environ.get("PROBE_HOLD_S", "8")))
            return original_fit(self, max_steps)

        trainer.Trainer.fit = fit
        result["rc"] = pretrain.run(cfg, args)
    elif mode == "nan_steps":
        from megatron_ego.losses.objective import EgoAgentObjective

        bad = {int(s) for s in os.environ["PROBE_NAN_STEPS"].split(",")}
        original_forward = EgoAgentObjective.forward

        def forward(self, *a, **kw):
            loss, terms = original_forward(self, *a, **kw)
            if made and made[0].state.step + 1 in bad:  # the step being computed
                loss = loss * float("nan")
            return loss, terms

        EgoAgentObjective.forward = forward
        result["rc"] = pretrain.run(cfg, args)
    result["steps"] = steps
    print("PROBE " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
