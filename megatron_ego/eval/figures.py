"""Evaluation figures (PNG): predicted vs true skeletons, and future-state retrieval examples.

Figures are drawn on ``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot global state), so
they work headless and from several threads. Saved without tight bounding boxes: a figure is
exactly ``figsize x dpi`` pixels.

Usage::

    plot_skeleton_sequence(pred, true, visible, "runs/x/act_example.png")   # [F, 17, 3] metres
    plot_retrieval_examples(query, top5_images, true_rank, "runs/x/retrieval_example.png")
    plot_top1_by_bin(results["retrieval"], "rot", [("lt2", "< 2 deg"), ...], "runs/x/t.png")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# COCO-17 joint order (docs/paper_facts.md "Data"): limbs as joint-index pairs
COCO_EDGES = (
    (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),  # head to shoulders
    (5, 6), (5, 7), (7, 9), (6, 8), (8, 10),  # shoulders and arms
    (5, 11), (6, 12), (11, 12),  # torso
    (11, 13), (13, 15), (12, 14), (14, 16),  # legs
)
PRED_COLOUR, TRUE_COLOUR = "tab:red", "tab:blue"
HIT_COLOUR, MISS_COLOUR = "tab:green", "tab:red"


def _new_figure(width_in: float, height_in: float, dpi: int) -> Figure:
    figure = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _draw_skeleton(ax, points: np.ndarray, visible: np.ndarray, colour: str, label: str) -> None:
    """Draw joints ``points`` [J, 2] (plot coordinates) and the limbs whose ends are visible."""
    for a, b in COCO_EDGES:
        if b < len(points) and visible[a] and visible[b]:
            ax.plot(points[[a, b], 0], points[[a, b], 1], color=colour, linewidth=1.5)
    ax.scatter(points[visible, 0], points[visible, 1], s=8, color=colour, label=label)


def plot_skeleton_sequence(
    pred: np.ndarray,
    true: np.ndarray,
    visible: np.ndarray,
    path: str | Path,
    num_panels: int = 4,
    panel_inches: float = 3.0,
    dpi: int = 100,
    fps: float = 30.0,
    title: str | None = None,
) -> Path:
    """Predicted (red) over true (blue) skeletons at ``num_panels`` frames spread over the window.

    Args:
        pred: [F, J, 3] predicted joints, metres, egocentric camera frame (x right, y down,
            z forward).
        true: [F, J, 3] true joints, metres.
        visible: [F, J] bool, true-joint visibility (invisible true joints are not drawn;
            predicted joints are all drawn).
        path: PNG to write (parent folders are created).
        fps: pose rate; frame f of the window is shown as "+(f + 1) / fps s" after the last
            observed pose.
        title: the figure's title (e.g. the clip and its MPJPE against a baseline's).
    Returns:
        ``path``. Top row: front view (the camera's: x right, y down); bottom row: side view
        (z forward, y down). One legend for the figure. Image size: (num_panels x panel_inches x
        dpi) by (2 x panel_inches x dpi).
    """
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    visible = np.asarray(visible, dtype=bool)
    if pred.ndim != 3 or pred.shape[-1] != 3 or true.shape != pred.shape:
        raise ValueError(
            f"skeletons must be [F, J, 3] and match; got {pred.shape} and {true.shape}"
        )
    if visible.shape != pred.shape[:2]:
        raise ValueError(f"visible must be [F, J] = {list(pred.shape[:2])}; got {visible.shape}")
    num_panels = max(1, min(num_panels, pred.shape[0]))
    frames = np.linspace(0, pred.shape[0] - 1, num_panels).round().astype(int)
    shown = np.concatenate([pred.reshape(-1, 3), true[visible]])  # [*, 3]
    shown = shown[np.isfinite(shown).all(axis=1)]
    low, high = (shown.min(axis=0), shown.max(axis=0)) if len(shown) else (-np.ones(3), np.ones(3))
    centre, half = (low + high) / 2, (high - low).max() / 2 * 1.1 + 0.05  # one span for all axes
    low, high = centre - half, centre + half

    figure = _new_figure(num_panels * panel_inches, 2 * panel_inches, dpi)
    axes = figure.subplots(2, num_panels, squeeze=False)
    everywhere = np.ones(pred.shape[1], dtype=bool)
    views = ((0, "x", "front view"), (2, "z", "side view"))
    for column, frame in enumerate(frames):
        for row, (horizontal, name, view) in enumerate(views):
            ax = axes[row, column]
            _draw_skeleton(ax, true[frame][:, [horizontal, 1]], visible[frame], TRUE_COLOUR,
                           "true (visible joints)")
            _draw_skeleton(ax, pred[frame][:, [horizontal, 1]], everywhere, PRED_COLOUR,
                           "predicted")
            ax.set_xlim(low[horizontal], high[horizontal])
            ax.set_ylim(high[1], low[1])  # y down, as in the camera
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlabel(f"{name} (m)", fontsize=7)
            ax.set_ylabel(f"{view}\ny (m)" if column == 0 else "y (m)", fontsize=7)
            ax.tick_params(labelsize=6)
            if row == 0:
                ax.set_title(f"+{(frame + 1) / fps:.2f} s after the last observed pose", fontsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    if title:
        figure.suptitle(title, fontsize=8)
    figure.tight_layout(rect=(0, 0.05, 1, 0.93 if title else 1))
    return _save(figure, path)


def _retrieval_row(axes, query_img, retrieved, marker, label, target_img, target_rank) -> None:
    count = retrieved.shape[0]
    panels = [(f"{label}\nquery I_t", query_img, None)]
    for rank in range(count):
        if marker is None:
            colour = MISS_COLOUR if rank == 0 else None
        else:
            colour = HIT_COLOUR if rank == marker else None
        panels.append((f"rank {rank + 1}", retrieved[rank], colour))
    if target_img is not None:
        panels.append((f"true I_t+1: rank {target_rank}", target_img, HIT_COLOUR))
    for ax, (title, image, colour) in zip(axes, panels):
        ax.imshow(image)
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(colour is not None)
            if colour is not None:
                spine.set_color(colour)
                spine.set_linewidth(4)


def plot_retrieval_examples(
    query_img: np.ndarray,
    retrieved: np.ndarray,
    true_idx_marker: int | None,
    path: str | Path,
    panel_inches: float = 2.0,
    dpi: int = 100,
    target_img: np.ndarray | None = None,
    target_rank: int | None = None,
    baseline: tuple[np.ndarray, int | None, int | None] | None = None,
) -> Path:
    """The query frame, then the retrieved gallery frames in rank order; the true t+1 is framed.

    Args:
        query_img: [H, W, 3] uint8, the input frame I_t of the query.
        retrieved: [K, H, W, 3] uint8, gallery frames ranked 1..K.
        true_idx_marker: position (0..K-1) of the true frame t+1 among ``retrieved``, drawn with a
            green frame; None when it is not among them (rank 1 is then framed red).
        path: PNG to write.
        target_img: [H, W, 3] the true I_t+1, shown last with ``target_rank`` (its rank in the
            whole gallery); None leaves the panel out.
        baseline: (retrieved [K, H, W, 3], marker, target rank) of the representation-only
            baseline, drawn as a second row below EgoAgent's.
    Returns:
        ``path``; image size ((K + 1 [+ 1 with target_img]) x panel_inches x dpi) by
        (rows x panel_inches x dpi), one row, two with ``baseline``.
    """
    query_img, retrieved = np.asarray(query_img), np.asarray(retrieved)
    if query_img.ndim != 3 or query_img.shape[-1] != 3 or retrieved.ndim != 4:
        raise ValueError(
            f"need query [H, W, 3] and retrieved [K, H, W, 3]; got {query_img.shape}, "
            f"{retrieved.shape}"
        )
    count = retrieved.shape[0]
    if true_idx_marker is not None and not 0 <= true_idx_marker < count:
        raise ValueError(f"true_idx_marker must be None or in [0, {count}); got {true_idx_marker}")
    columns = count + 1 + (target_img is not None)
    rows = 2 if baseline is not None else 1
    figure = _new_figure(columns * panel_inches, rows * panel_inches, dpi)
    axes = figure.subplots(rows, columns, squeeze=False)
    figure.suptitle("query I_t, then the gallery frames ranked 1-5 for its predicted I_t+1. "
                    "Green border: the true I_t+1; red border on rank 1: the true I_t+1 is not "
                    "in the top 5", fontsize=6)
    label = "EgoAgent" if baseline is not None else ""
    _retrieval_row(axes[0], query_img, retrieved, true_idx_marker, label, target_img, target_rank)
    if baseline is not None:
        base_retrieved, base_marker, base_rank = baseline
        _retrieval_row(axes[1], query_img, np.asarray(base_retrieved), base_marker,
                       "representation only", target_img, base_rank)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.15 / rows))
    return _save(figure, path)


def plot_top1_by_bin(
    methods: dict[str, dict[str, float | int | None]],
    tag: str,
    bins: list[tuple[str, str]],
    path: str | Path,
    dpi: int = 100,
) -> Path:
    """Grouped bars: Top-1 (%) of every method per bin of camera motion, query counts on top.

    Args:
        methods: {method: metrics} as run_retrieval returns them (keys ``top1_<tag>_<bin>`` and
            ``num_queries_<tag>_<bin>``); a missing or non-finite Top-1 is drawn as an empty
            bar labelled "n/a".
        tag: "rot" or "trans"; bins: (bin name, axis label) in order.
        path: PNG to write.
    Returns:
        ``path``; image size 6.4 x 4 inches at ``dpi``.
    """
    if not methods or not bins:
        raise ValueError("need at least one method and one bin")
    figure = _new_figure(6.4, 4.0, dpi)
    ax = figure.subplots()
    width, highest = 0.8 / len(methods), 0.0
    for k, (method, metrics) in enumerate(methods.items()):
        for b, (name, _) in enumerate(bins):
            value = metrics.get(f"top1_{tag}_{name}")
            finite = value is not None and np.isfinite(value)
            x = b + (k - (len(methods) - 1) / 2) * width
            ax.bar(x, value if finite else 0.0, width, color=f"C{k}",
                   label=method if b == 0 else None)
            count = metrics.get(f"num_queries_{tag}_{name}")
            text = f"{value:.1f}" if finite else "n/a"
            ax.text(x, (value if finite else 0.0) + 0.5, f"{text}\nn={count}", ha="center",
                    va="bottom", fontsize=6)
            highest = max(highest, value if finite else 0.0)
    ax.set_ylim(0.0, highest * 1.15 + 5.0)  # room for the labels above the bars
    ax.set_xticks(range(len(bins)), [label for _, label in bins])
    ax.set_ylabel("Top-1 (%)")
    ax.set_xlabel("camera rotation between I_t and I_t+1" if tag == "rot"
                  else "camera translation between I_t and I_t+1")
    ax.set_title("Future-state retrieval by camera motion", fontsize=9)
    ax.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)
