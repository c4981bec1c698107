"""Future-state retrieval of one export in every query-vs-gallery space: the space table.

    PYTHONPATH=$PWD python bench/predict_space.py --model runs/demo/export \
        --data runs/demo/data/egoexo4d/val --out runs/predict_space

Each row runs `megatron_ego.eval.run_retrieval` (the predict benchmark: Top-1 with the query's
own input frame I_t left out, split by the camera's rotation between I_t and I_{t+1}) on a view
of the export (`model.safetensors` = the teacher, `student.safetensors` = the student) whose
gallery network and query path are the row's:

| row | query | gallery |
|---|---|---|
| baseline | teacher's rep(I_t), logits | teacher's rep, logits |
| student rep | student's rep(I_t), logits | teacher's rep, logits |
| shipped | student's prediction, logits | teacher's rep, logits (what `launch/evaluate.py` scores) |
| student space | student's prediction, logits | student's rep, logits |
| teacher predicts | teacher's prediction, logits | teacher's rep, logits |
| pre-head prediction | student's future-state output (before the head) | teacher's state feature |
| pre-head copying | teacher's state feature of I_t | teacher's state feature |

"logits" are the K prototype similarities the DINO losses compare; the state feature is the
state query's output (what k-NN reads). It also prints mean cosines over the same queries:
between the teacher's logits of I_t and of I_{t+1} (neighbouring frames), and between the
student's prediction and the teacher's logits of I_{t+1} (its target) and of I_t; and the same
in the pre-head space. Writes `table.md` and `space.json` under --out.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megatron_ego.cli_help import make_parser
from megatron_ego.eval.features import (
    StoredFrames,
    ValClips,
    clip_table,
    extract,
    make_loader,
    open_val_clips,
    select_clips,
)
from megatron_ego.eval.run_retrieval import run_retrieval
from megatron_ego.inference import EgoAgent
from megatron_ego.runtime.processes import join_processes

ROWS = (  # (label, view, method of run_retrieval's results)
    ("teacher's rep(I_t) vs teacher gallery (the baseline)", "shipped", "representation_only"),
    ("student's rep(I_t) vs teacher gallery", "student_rep", "egoagent"),
    ("student prediction vs teacher gallery (shipped)", "shipped", "egoagent"),
    ("student prediction vs student gallery", "student", "egoagent"),
    ("student's rep(I_t) vs student gallery", "student", "representation_only"),
    ("teacher prediction vs teacher gallery", "teacher", "egoagent"),
    ("pre-head features: prediction vs pre-head gallery", "pre_head", "egoagent"),
    ("pre-head features: copying", "pre_head", "representation_only"),
)


class RepQuery:
    """The export with `query`'s representation of I_t as step t's prediction (the gallery stays
    `gallery`'s): run_retrieval's "egoagent" row then scores copying across networks."""

    def __init__(self, gallery: EgoAgent, query: EgoAgent):
        self.gallery, self.query = gallery, query
        self.cfg, self.image_size, self.num_steps = gallery.cfg, gallery.image_size, \
            gallery.num_steps

    def represent(self, images, with_logits: bool = False):
        return self.gallery.represent(images, with_logits=with_logits)

    def predict(self, images, poses):
        frames = self.query.prepare_images(images, lead=2)  # [n, T, 3, S, S]
        _, logits = self.query.represent(frames.flatten(0, 1), with_logits=True)  # [n T, K]
        return logits.unflatten(0, frames.shape[:2])  # [n, T, K]


class PreHead:
    """The export scored before its heads: gallery = the state feature [n, h], query = the raw
    future-state output [n, T, h] (both through run_retrieval's "logits" slots)."""

    def __init__(self, agent: EgoAgent):
        self.agent, self.cfg = agent, agent.cfg
        self.image_size, self.num_steps = agent.image_size, agent.num_steps

    def represent(self, images, with_logits: bool = False):
        feature = self.agent.represent(images)  # [n, h]
        return (feature, feature) if with_logits else feature

    def predict(self, images, poses):
        state, _ = self.agent.predict(images, poses, with_state=True)  # [n, T, h]
        return state


def views(agent: EgoAgent) -> dict[str, object]:
    """The export seen through each row's networks (`agent.module` is the teacher, `agent.main`
    the student)."""
    if agent.main is agent.module:
        raise SystemExit("error: this export holds one network; re-export with --weights agent "
                         "(teacher and student) to compare the spaces")

    def pair(gallery_net, query_net) -> EgoAgent:
        return EgoAgent(gallery_net, agent.cfg, agent.device, agent.precision, agent.metadata,
                        main=query_net)

    student = pair(agent.main, agent.main)
    return {"shipped": agent, "student": student, "teacher": pair(agent.module, agent.module),
            "student_rep": RepQuery(agent, student), "pre_head": PreHead(agent)}


@torch.no_grad()
def cosines(agent: EgoAgent, data_dir: str, max_clips: int | None, batch_size: int,
            workers: int) -> dict[str, float]:
    """Mean cosines over every (clip, t < T-1) query: neighbouring teacher frames, and the
    student's prediction to its target I_{t+1} and to its input I_t; logits and pre-head."""
    dataset = open_val_clips(data_dir, agent)
    T = agent.num_steps
    table = clip_table(data_dir)  # [N, 2 + T]
    clip_ids = select_clips(len(table), max_clips)
    frame_ids = np.unique(table[clip_ids, 2: 2 + T])
    stored = StoredFrames(data_dir, frame_ids, agent.image_size, dataset.encoding,
                          dataset.frame_size)
    (feature, logits), _ = extract(make_loader(stored, batch_size, workers),
                                   lambda x: agent.represent(x, with_logits=True))
    rows = torch.from_numpy(np.searchsorted(frame_ids, table[clip_ids, 2: 2 + T]))  # [c, T]
    states, predicted = [], []
    for frames, poses, _ in make_loader(ValClips(data_dir, clip_ids, agent.image_size),
                                        batch_size, workers):
        state, logit = agent.predict(frames, poses, with_state=True)  # [b, T, h], [b, T, K]
        states.append(state[:, :-1].cpu())
        predicted.append(logit[:, :-1].cpu())
    now, after = rows[:, :-1].flatten(), rows[:, 1:].flatten()  # [q] I_t, I_{t+1}
    out = {}
    for space, gallery, query in (("logits", logits, torch.cat(predicted)),
                                  ("pre_head", feature, torch.cat(states))):
        query = query.flatten(0, 1)  # [q, d]
        out[f"{space}_teacher_neighbours"] = F.cosine_similarity(
            gallery[now], gallery[after], dim=1).mean().item()
        out[f"{space}_prediction_to_target"] = F.cosine_similarity(
            query, gallery[after], dim=1).mean().item()
        out[f"{space}_prediction_to_input"] = F.cosine_similarity(
            query, gallery[now], dim=1).mean().item()
    return out


def markdown(results: dict[str, dict], cos: dict[str, float]) -> str:
    lines = ["| query vs gallery | Top-1 % all | Top-1 % rotation < 2 deg | >= 10 deg | queries |",
             "|---|---|---|---|---|"]
    for label, view, method in ROWS:
        r = results[view][method]
        lines.append(f"| {label} | {r['top1']:.1f} | {r['top1_rot_lt2']:.1f} | "
                     f"{r['top1_rot_ge10']:.1f} | {r['num_queries']} |")
    lines += ["", "| mean cosine | logits | pre-head |", "|---|---|---|"]
    for name, what in (("teacher_neighbours", "teacher I_t to teacher I_{t+1}"),
                       ("prediction_to_target", "student prediction to teacher I_{t+1}"),
                       ("prediction_to_input", "student prediction to teacher I_t")):
        lines.append(f"| {what} | {cos['logits_' + name]:.3f} | {cos['pre_head_' + name]:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--model", required=True, help="export folder (launch/export.py)")
    parser.add_argument("--data", required=True, help="preprocessed Ego-Exo4D val split")
    parser.add_argument("--out", required=True, help="folder for table.md and space.json")
    parser.add_argument("--max-clips", type=int, default=None, help="clips evenly spread; all")
    parser.add_argument("--batch-size", type=int, default=64, help="clips or frames per batch")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto = CUDA when available")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ranks = join_processes(None if args.device == "auto" else args.device)
    if ranks.world_size > 1:
        raise SystemExit("error: run bench/predict_space.py as one process (no torchrun)")
    agent = EgoAgent.from_pretrained(args.model, device=ranks.device)
    out = Path(args.out)
    results = {}
    for name, view in views(agent).items():
        results[name] = run_retrieval(view, args.data, out / name, ranks,
                                      batch_size=args.batch_size, workers=args.workers,
                                      max_clips=args.max_clips, num_figures=0,
                                      controls=False)  # the space, not the inputs
    cos = cosines(agent, args.data, args.max_clips, args.batch_size, args.workers)
    table = markdown(results, cos)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "space.json").write_text(json.dumps({"results": results, "cosines": cos}, indent=1))
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
