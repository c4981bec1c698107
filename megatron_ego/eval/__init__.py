"""Evaluation of the three abilities: represent (k-NN), predict (retrieval), act (MPJPE / MPJVE).

Pure metric and baseline functions; ``launch/evaluate.py`` wires them to features and poses.
Figures live in ``megatron_ego.eval.figures`` (imported on demand: it pulls in matplotlib).
"""

from megatron_ego.eval.baselines import constant_velocity, zero_velocity
from megatron_ego.eval.knn import knn_accuracy, knn_classify, list_image_folder
from megatron_ego.eval.motion import motion_metrics
from megatron_ego.eval.report import read_results, write_results
from megatron_ego.eval.retrieval import retrieval_metrics, retrieve_topk

__all__ = [
    "constant_velocity",
    "knn_accuracy",
    "knn_classify",
    "list_image_folder",
    "motion_metrics",
    "read_results",
    "retrieval_metrics",
    "retrieve_topk",
    "write_results",
    "zero_velocity",
]
