"""The demonstration sets of the policy task: format (docs/data_format.md) and reader.

A folder per task (written by ``python -m preprocess.trifinger_demos``) holds three Megatron
indexed datasets (``IndexedDatasetBuilder``; one document per episode) and ``manifest.json``:

- ``steps`` (float32), one record per observation (T + 1 per episode): fingertips [9] m, cube
  centre [3] m, cube orientation [4] (x, y, z, w), the action taken there [9] m (zeros after
  the last);
- ``frames`` (uint8), PNG bytes of camera60: every observation of a training episode, the final
  one of a test episode;
- ``episodes`` (float32), one record per episode: joints [9] rad, cube centre [3], orientation
  [4], goal [3], the expert's scaled success [1].

Episodes are in order: the training demonstrations, then the held-out test episodes (the
expert run from the test initial states; the policies are evaluated from those states, and
move cube takes its goal image from the test episode's final frame). ``manifest.json`` names the
task, the seeds of both splits (``tasks.sample_initial_state``), the image size, the control
period, the expert's success per split and the options of the run.

    demos = DemoSet("data/trifinger/reach_cube")
    demos.tips[demos.train]          # [n, T+1, 9]
    demos.image(0, 2)                # uint8 [270, 270, 3]
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from megatron_ego.data.indexed import IndexedDataError, open_indexed
from megatron_ego.eval.policy.tasks import InitialState, get_task

FORMAT_VERSION = 1
STEP_FIELDS = 25  # tips 9, cube position 3, orientation 4, action 9
EPISODE_FIELDS = 20  # joints 9, cube position 3, orientation 4, goal 3, success 1
FILES = ("steps", "frames", "episodes")
MAKE = "python -m preprocess.trifinger_demos --task {task} --out {path}"


def encode_png(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> PNG bytes as uint8 [n] (lossless)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).copy()


def decode_png(data: np.ndarray) -> np.ndarray:
    """PNG bytes -> uint8 [H, W, 3]."""
    from PIL import Image

    with Image.open(io.BytesIO(np.asarray(data).tobytes())) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


class DemoSet:
    """A demonstration folder, loaded into arrays (a few MB) plus lazily decoded frames.

    Raises:
        FileNotFoundError: the folder or its manifest is missing (with the command to make it).
        ValueError: the manifest is not a demonstration manifest of a known version.
        IndexedDataError: a data file is missing, damaged, or disagrees with the manifest.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{path} holds no demonstrations (no manifest.json): make them with "
                f"`{MAKE.format(task='reach_cube', path=path)}`")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{manifest_path} is not readable JSON ({err}): make the "
                             "demonstrations again") from err
        if manifest.get("source") != "trifinger" or manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{manifest_path} is not a TriFinger demonstration manifest of "
                             f"format {FORMAT_VERSION}: make the demonstrations again")
        self.path, self.manifest = path, manifest
        try:
            self.task = get_task(manifest["task"])
            self.seeds = {split: [int(s) for s in manifest["seeds"][split]] for split in
                          ("train", "test")}
            self.image_size = int(manifest["image_size"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{manifest_path} lacks a valid {err}: make the demonstrations "
                             "again") from err
        n_train, n_test = len(self.seeds["train"]), len(self.seeds["test"])
        self.train, self.test = np.arange(n_train), np.arange(n_train, n_train + n_test)
        self._load(n_train + n_test)

    def _load(self, n: int) -> None:
        T = self.task.num_actions
        steps = open_indexed(str(self.path / "steps"), np.float32)
        episodes = open_indexed(str(self.path / "episodes"), np.float32)
        self._frames = open_indexed(str(self.path / "frames"), np.uint8)
        n_train = len(self.train)
        expected = {"steps": n * (T + 1), "episodes": n, "frames": n_train * (T + 1) + n - n_train}
        for name, data in (("steps", steps), ("episodes", episodes), ("frames", self._frames)):
            if len(data) != expected[name]:
                raise IndexedDataError(
                    f"{self.path / name}.bin holds {len(data)} records but the manifest implies "
                    f"{expected[name]}: make the demonstrations again")
        table = np.stack([np.array(steps[i]) for i in range(len(steps))])  # [n (T+1), 25]
        rows = np.stack([np.array(episodes[i]) for i in range(n)])  # [n, 20]
        if table.shape[1] != STEP_FIELDS or rows.shape[1] != EPISODE_FIELDS:
            raise IndexedDataError(f"{self.path}: records of {table.shape[1]} / {rows.shape[1]} "
                                   "values, not 25 / 20: make the demonstrations again")
        table = table.reshape(n, T + 1, STEP_FIELDS)
        self.tips, self.cubes = table[..., :9], table[..., 9:16]  # [n, T+1, 9], [n, T+1, 7]
        self.actions = table[:, :T, 16:25]  # [n, T, 9]
        self.goals, self.success = rows[:, 16:19], rows[:, 19]  # [n, 3], [n]
        self._frame_start = np.r_[np.arange(n_train) * (T + 1),
                                  n_train * (T + 1) + np.arange(n - n_train)]  # [n]

    def __len__(self) -> int:
        return len(self.success)

    def seed(self, episode: int) -> int:
        split, i = ("train", episode) if episode < len(self.train) else \
            ("test", episode - len(self.train))
        return self.seeds[split][i]

    def initial_state(self, episode: int) -> InitialState:
        """The episode's initial state, re-drawn from its seed (exact, float64)."""
        from megatron_ego.eval.policy.tasks import sample_initial_state

        return sample_initial_state(self.task, self.seed(episode))

    def image(self, episode: int, step: int) -> np.ndarray:
        """uint8 [S, S, 3]: camera60 at ``step`` of a training episode; a test episode holds
        only its final frame (step -1 or T)."""
        T = self.task.num_actions
        if episode >= len(self.train):
            if step not in (-1, T):
                raise IndexError(f"test episode {episode} holds only its final frame")
            step = 0
        elif step < 0:
            step += T + 1
        return decode_png(self._frames[int(self._frame_start[episode]) + step])

    def goal_image(self, episode: int) -> np.ndarray:
        """The final frame of the episode (move cube's goal image)."""
        return self.image(episode, -1)
