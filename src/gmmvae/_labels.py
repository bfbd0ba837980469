"""Text labels that do not overlap: a small deterministic repel step in display coordinates.

Labels start next to their points; boxes that overlap one another (or a point or fixed box
they must not cover) are pushed apart along the axis of least overlap, half each, and kept
inside the axes. Labels that still collide after the iterations are placed greedily at the
nearest free spot on rings around their point. A thin leader line joins a label moved away
from its point to that point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.collections import LineCollection
    from matplotlib.text import Annotation

# Boxes are rows (x0, y0, x1, y1) in display pixels.


def _overlap(a: np.ndarray, b: np.ndarray, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """Overlap widths in x and y of every box in ``a`` (n, 4) with every box in ``b`` (m, 4)."""
    ox = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    oy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return ox + pad, oy + pad  # (n, m) each


def _wide(boxes: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """Boxes widened by ``margin`` (n,) on the left and right (label-label tests only)."""
    return boxes + np.column_stack([-margin, 0 * margin, margin, 0 * margin])


def _collisions(boxes: np.ndarray, fixed: np.ndarray, pad: float, margin: np.ndarray) -> np.ndarray:
    """Boolean (n,): box i overlaps another box or a fixed box (with ``pad`` between them)."""
    wide = _wide(boxes, margin)
    ox, oy = _overlap(wide, wide, pad)
    hit = (ox > 0) & (oy > 0)
    np.fill_diagonal(hit, False)
    bad = hit.any(1)
    if len(fixed):
        fx, fy = _overlap(boxes, fixed, pad)
        bad |= ((fx > 0) & (fy > 0)).any(1)
    return bad


def _clamp(boxes: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    x0 = np.clip(boxes[:, 0], bounds[0], np.maximum(bounds[2] - w, bounds[0]))
    y0 = np.clip(boxes[:, 1], bounds[1], np.maximum(bounds[3] - h, bounds[1]))
    return np.column_stack([x0, y0, x0 + w, y0 + h])


def _push(boxes: np.ndarray, fixed: np.ndarray, pad: float, margin: np.ndarray) -> np.ndarray:
    """One step: the shift (n, 2) that separates each overlapping pair along its smaller overlap."""
    n = len(boxes)
    shift = np.zeros((n, 2))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    wide = _wide(boxes, margin)
    ox, oy = _overlap(wide, wide, pad)
    for i in range(n):
        for j in range(i + 1, n):
            if ox[i, j] <= 0 or oy[i, j] <= 0:
                continue
            axis, amount = (0, ox[i, j]) if ox[i, j] < oy[i, j] else (1, oy[i, j])
            d = centres[i, axis] - centres[j, axis]
            sign = 1.0 if d >= 0 else -1.0  # ties: the earlier label goes up (or right)
            shift[i, axis] += sign * amount / 2
            shift[j, axis] -= sign * amount / 2
    if len(fixed):
        fx, fy = _overlap(boxes, fixed, pad)
        fcentres = (fixed[:, :2] + fixed[:, 2:]) / 2
        for i, k in zip(*np.nonzero((fx > 0) & (fy > 0)), strict=True):
            axis, amount = (0, fx[i, k]) if fx[i, k] < fy[i, k] else (1, fy[i, k])
            sign = 1.0 if centres[i, axis] >= fcentres[k, axis] else -1.0
            shift[i, axis] += sign * amount
    return shift


def _free(cand: np.ndarray, obstacles: np.ndarray, pad: float) -> np.ndarray:
    """Boolean (c,): candidate box c clears every box of ``obstacles`` by ``pad``."""
    if not len(obstacles):
        return np.ones(len(cand), dtype=bool)
    ox, oy = _overlap(cand, obstacles, pad)
    return ~((ox > 0) & (oy > 0)).any(1)


def _greedy(
    boxes: np.ndarray,
    anchors: np.ndarray,
    bad: np.ndarray,
    fixed: np.ndarray,
    bounds: np.ndarray,
    pad: float,
    margin: np.ndarray,
) -> np.ndarray:
    """Re-place the colliding labels one by one at the nearest free spot around their point."""
    boxes = boxes.copy()
    placed = ~bad
    step = max(float(np.median(boxes[:, 3] - boxes[:, 1])), 1.0) / 2
    reach = float(np.hypot(bounds[2] - bounds[0], bounds[3] - bounds[1]))
    angles = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
    for i in np.flatnonzero(bad):
        w, h = boxes[i, 2] - boxes[i, 0], boxes[i, 3] - boxes[i, 1]
        others = _wide(boxes[placed], margin[placed])
        best = None
        # First clear of the points and the legend too; if nowhere is, of the other labels only.
        for obstacles in (fixed, fixed[:0]):
            for radius in np.arange(step, reach + step, step):
                # candidates: the box centred on a ring around its point, kept inside bounds
                cx = anchors[i, 0] + radius * np.cos(angles) - w / 2
                cy = anchors[i, 1] + radius * np.sin(angles) - h / 2
                cand = _clamp(np.column_stack([cx, cy, cx + w, cy + h]), bounds)
                wide = _wide(cand, np.full(len(cand), margin[i]))
                free = _free(wide, others, pad) & _free(cand, obstacles, pad)
                if free.any():
                    best = cand[np.argmax(free)]
                    break
            if best is not None:
                break
        if best is not None:  # the axes are full otherwise: leave the label where it is
            boxes[i] = best
        placed[i] = True
    return boxes


def repel_boxes(
    boxes: np.ndarray,
    anchors: np.ndarray,
    *,
    bounds: np.ndarray,
    fixed: np.ndarray | None = None,
    pad: float = 2.0,
    margin: np.ndarray | float = 0.0,
    max_iter: int = 300,
) -> np.ndarray:
    """Boxes (n, 4; x0, y0, x1, y1) moved so that none overlaps another or a ``fixed`` box.

    Deterministic: the same input gives the same output. ``anchors`` (n, 2) are the labelled
    points (for the greedy fallback), ``bounds`` (x0, y0, x1, y1) the area boxes stay in,
    ``pad`` the smallest gap left between boxes, and ``margin`` (scalar or (n,)) extra room
    left and right of each box, between boxes only.
    """
    boxes = _clamp(np.asarray(boxes, float), bounds)
    fixed = np.zeros((0, 4)) if fixed is None else np.asarray(fixed, float).reshape(-1, 4)
    margin = np.broadcast_to(np.asarray(margin, float), (len(boxes),))
    for _ in range(max_iter):
        if not _collisions(boxes, fixed, pad, margin).any():
            return boxes
        shift = _push(boxes, fixed, pad, margin)
        boxes = _clamp(boxes + np.tile(shift, 2), bounds)
    bad = _collisions(boxes, fixed, pad, margin)
    if bad.any():
        boxes = _greedy(boxes, np.asarray(anchors, float), bad, fixed, bounds, pad, margin)
    return boxes


def repel_labels(
    ax: Axes,
    texts: Sequence[Annotation],
    *,
    point_radius: float = 1.5,
    pad: float = 1.0,
    leader_min: float = 6.0,
    avoid_legend: bool = True,
) -> LineCollection | None:
    """Move ``texts`` (annotations of points of ``ax``) so that no two overlap.

    Works in display coordinates after a layout-only draw; offsets are written back to each
    annotation (``textcoords`` ``"offset points"`` or ``"offset pixels"``). Labels do not cover
    any labelled point nor, with ``avoid_legend``, the legend. Sizes are in points:
    ``point_radius`` of the points kept clear, ``pad`` the gap between labels, ``leader_min``
    the distance from its point beyond which a label gets a thin leader line.

    Returns the leader lines (a LineCollection added to ``ax``), or None when none is needed.
    """
    from matplotlib.collections import LineCollection

    texts = list(texts)
    if not texts:
        return None
    fig = ax.figure
    fig.draw_without_rendering()  # final limits and layout before measuring the texts
    px = fig.dpi / 72.0  # pixels per point
    for text in texts:
        if text.anncoords not in ("offset points", "offset pixels"):
            msg = f"textcoords must be 'offset points' or 'offset pixels', got {text.anncoords!r}."
            raise ValueError(msg)
    anchors = ax.transData.transform(np.array([t.xy for t in texts], float))  # (n, 2)
    boxes = np.array([t.get_window_extent().extents for t in texts])  # (n, 4)
    # Rendered widths change by up to ~7 % between dpis (font hinting): labels keep that much
    # room between them, so that the figure saved at another dpi has no overlap either.
    margin = 0.05 * (boxes[:, 2] - boxes[:, 0])
    r = point_radius * px
    fixed = [np.column_stack([anchors - r, anchors + r])]
    legend = ax.get_legend()
    if avoid_legend and legend is not None:
        fixed.append(np.asarray(legend.get_window_extent().extents)[None, :])
    frame = ax.get_window_extent().extents
    bounds = frame + np.array([1, 1, -1, -1]) * px
    new = repel_boxes(
        boxes, anchors, bounds=bounds, fixed=np.vstack(fixed), pad=pad * px, margin=margin
    )

    segments = []
    for text, old, box, anchor in zip(texts, boxes, new, anchors, strict=True):
        delta = box[:2] - old[:2]
        if text.anncoords == "offset points":
            delta = delta / px
        text.xyann = (text.xyann[0] + delta[0], text.xyann[1] + delta[1])
        nearest = np.clip(anchor, box[:2], box[2:])  # the box's closest point to the anchor
        if np.hypot(*(nearest - anchor)) > leader_min * px:
            segments.append(ax.transData.inverted().transform(np.vstack([anchor, nearest])))
    if not segments:
        return None
    lines = LineCollection(segments, colors="0.35", linewidths=0.5, zorder=2.5)
    ax.add_collection(lines, autolim=False)
    return lines
