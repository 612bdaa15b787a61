"""Overlap and surface metrics of one binary region, with the legacy BraTS rules for empty masks.

HD95 follows the official BraTS package (`brats-evaluation` -> panoptica `global_bin_hd95`):
the surface of a mask is the mask minus its erosion by the 6-connected cross; distances go
from every surface voxel of one mask to the nearest surface voxel of the other, in both
directions; HD95 is the 95th percentile (linear interpolation) of the pooled distances.
Unlike panoptica's global metric, distances here are in millimetres (voxel spacing applied).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

#: HD95 (mm) scored when exactly one mask is empty: the diagonal of the 240x240x155 mm BraTS volume.
EMPTY_HD95_MM: float = round(math.hypot(240.0, 240.0, 155.0), 2)  # 373.13

#: Metric keys of `region_metrics`, in report order.
METRICS: tuple[str, ...] = ("dice", "hd95", "sensitivity", "specificity", "pred_volume_ml", "ref_volume_ml")

METRIC_TITLES: Mapping[str, str] = {
    "dice": "Dice",
    "hd95": "HD95 (mm)",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "pred_volume_ml": "Pred vol (mL)",
    "ref_volume_ml": "Ref vol (mL)",
}

#: True when a larger value is better (for summaries and comparisons).
HIGHER_IS_BETTER: Mapping[str, bool | None] = {
    "dice": True,
    "hd95": False,
    "sensitivity": True,
    "specificity": True,
    "pred_volume_ml": None,
    "ref_volume_ml": None,
}

_CROSS = ndimage.generate_binary_structure(3, 1)


def _as_mask(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3:
        raise ValueError(f"{name} must be a 3D mask, got shape {a.shape}")
    return a if a.dtype == bool else a != 0


def _check_spacing(spacing_zyx: Sequence[float]) -> np.ndarray:
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three positive numbers (z, y, x), got {tuple(spacing_zyx)}")
    return sp


def bounding_box(*masks: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Smallest box (as slices) holding every True voxel of `masks`, grown by `margin` voxels."""
    any_mask = np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]
    box = []
    for axis in range(any_mask.ndim):
        other = tuple(a for a in range(any_mask.ndim) if a != axis)
        idx = np.flatnonzero(np.any(any_mask, axis=other))
        if idx.size == 0:
            return tuple(slice(0, 0) for _ in range(any_mask.ndim))
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, any_mask.shape[axis])))
    return tuple(box)


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its erosion by the 6-connected cross (voxels on the array edge count)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each pred surface voxel to the ref surface, and from each ref surface voxel to pred's.

    Both masks must be non-empty. Work is confined to their joint bounding box plus one voxel,
    which leaves every distance unchanged (the Euclidean transform is exact and all surface voxels
    lie inside the box) and the surface itself unchanged (the box edge is either background or the
    array edge, both of which erosion treats as background).
    """
    pred, ref = _as_mask(pred, "pred"), _as_mask(ref, "ref")
    sp = _check_spacing(spacing_zyx)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    box = bounding_box(pred, ref, margin=1)
    sp_pred, sp_ref = surface(pred[box]), surface(ref[box])
    d_pred_to_ref = ndimage.distance_transform_edt(~sp_ref, sampling=sp)[sp_pred]
    d_ref_to_pred = ndimage.distance_transform_edt(~sp_pred, sampling=sp)[sp_ref]
    return d_pred_to_ref, d_ref_to_pred


def hd95(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th percentile of the pooled symmetric surface distances (mm), with the legacy empty-mask rules."""
    pred, ref = _as_mask(pred, "pred"), _as_mask(ref, "ref")
    p_any, r_any = bool(pred.any()), bool(ref.any())
    if not p_any and not r_any:
        return 0.0
    if p_any != r_any:
        return EMPTY_HD95_MM
    d1, d2 = surface_distances(pred, ref, spacing_zyx)
    return float(np.percentile(np.concatenate((d1, d2)), 95))


def region_metrics(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, float]:
    """Dice, HD95 (mm), sensitivity, specificity and both volumes (mL) of one binary region.

    Legacy BraTS rules: both masks empty -> Dice 1, HD95 0; exactly one empty -> Dice 0,
    HD95 `EMPTY_HD95_MM`. Sensitivity is 1 when the reference is empty (nothing to miss) and
    specificity 1 when the reference fills the volume (nothing to keep out).
    """
    pred, ref = _as_mask(pred, "pred"), _as_mask(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"pred shape {pred.shape} differs from ref shape {ref.shape}")
    sp = _check_spacing(spacing_zyx)
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    tp = int(np.count_nonzero(pred & ref)) if n_pred and n_ref else 0
    fp, fn = n_pred - tp, n_ref - tp
    tn = pred.size - tp - fp - fn
    voxel_ml = float(np.prod(sp)) / 1000.0
    return {
        "dice": 1.0 if n_pred + n_ref == 0 else 2.0 * tp / (n_pred + n_ref),
        "hd95": hd95(pred, ref, sp),
        "sensitivity": 1.0 if n_ref == 0 else tp / n_ref,
        "specificity": 1.0 if tn + fp == 0 else tn / (tn + fp),
        "pred_volume_ml": n_pred * voxel_ml,
        "ref_volume_ml": n_ref * voxel_ml,
    }
