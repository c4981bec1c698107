"""Keep the last good checkpoint (issue 23 item 5).

A step is flagged when DeepSpeed skipped it (inf/nan gradients) or its loss was non-finite
(known at the interval flush). While steps are flagged no checkpoint is written: the weights
may be those a diverging run left. The newest checkpoint saved before the first flagged step
of a streak is that streak's anchor: pruning never removes it (the anchors of the last
`keep_last` streaks are kept, so that routine fp16 loss-scale skips cannot pile up
checkpoints), and a run that stops names it in its message, so the user resumes from weights
that were saved before the trouble began.

    keeper = LastGood(state, keep_last, checkpoints_dir, saved_step)
    since = keeper.observe(step, skips.in_a_row, state.nonfinite_streak)  # None: not flagged
    if save and since is None: save(...); keeper.saved(step)
    raise TrainingStopped(f"{why}; {keeper.advice()}")
"""

from __future__ import annotations

from pathlib import Path

from megatron_ego.checkpoint_format.layout import tag_for
from megatron_ego.checkpoint_format.manifest import COMPLETE
from megatron_ego.training.state import TrainState


class LastGood:
    """The flag streak and its anchors (kept in `state.protected`, saved with every checkpoint)."""

    def __init__(self, state: TrainState, keep_last: int, checkpoints: Path, saved_step: int):
        self.state, self.keep_last, self.checkpoints = state, keep_last, Path(checkpoints)
        self.saved_step = saved_step
        """The newest checkpoint this run wrote or resumed from (0: none yet)."""
        self.first_flag: int | None = None
        """The first flagged step of the current streak; None while no step is flagged."""
        self.anchor: int = 0
        """The current streak's anchor (0: no checkpoint existed before it)."""

    def observe(self, step: int, skipped_in_a_row: int, nonfinite_in_a_row: int) -> int | None:
        """Note the flags as of optimizer step `step` (1-based); returns the first flagged step
        of the current streak, or None when `step` is not flagged."""
        streak = max(skipped_in_a_row, nonfinite_in_a_row)
        if streak == 0:
            self.first_flag = None
            return None
        first = step - streak + 1
        if self.first_flag is None or first < self.first_flag:
            self.first_flag = first
            self.anchor = self.saved_step
            if self.anchor and self.anchor not in self.state.protected:
                self.state.protected = [*self.state.protected, self.anchor][-self.keep_last:]
        return self.first_flag

    def saved(self, step: int) -> None:
        self.saved_step = step

    def protected(self) -> set[int]:
        """Steps whose checkpoints pruning must keep."""
        return set(self.state.protected)

    def _exists(self, step: int) -> Path | None:
        folder = self.checkpoints / tag_for(step)
        return folder if step and (folder / COMPLETE).is_file() else None

    def advice(self) -> str:
        """Which checkpoint to resume from, naming one that exists (or saying none does)."""
        if self.first_flag is not None:
            folder = self._exists(self.anchor)
            where = f"before the first flagged step {self.first_flag}"
        else:
            folder = self._exists(self.saved_step)
            where = "of this run"
        if folder is None:
            return "no checkpoint of this run exists: start over with --resume none --overwrite"
        return f"the newest checkpoint {where} is {folder}: resume with --resume {folder}"
