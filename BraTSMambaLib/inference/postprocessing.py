"""Region probabilities -> overlapping WT/TC/ET masks -> BraTS label map, and their volumes.

Each step takes numpy arrays or torch tensors. A tensor off the CPU is labelled where it is (on
the GPU after CUDA inference) and stays there, so only the small label map needs to come to the
host; anything else (CPU tensors too, where numpy is faster) gives numpy arrays. The label values
come from `conventions.regions_to_labels` through a table of its answers for the 8 possible
voxels, the regions from each region's label values in `conventions`, so the results equal
`regions_to_labels` and `labels_to_regions` (tested) at a fraction of their cost.
"""
from __future__ import annotations

import sys
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.errors import BraTSInputError

if TYPE_CHECKING:
    import torch

THRESHOLD = 0.5


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _off_cpu(x: Any) -> bool:
    return _is_tensor(x) and x.device.type != "cpu"


def _host(x: Any) -> np.ndarray:
    return x.numpy() if _is_tensor(x) else np.asarray(x)


def region_masks(probabilities: Any, threshold: float = THRESHOLD) -> Any:
    """(3, z, y, x) bool masks in REGIONS order; each region thresholded on its own sigmoid, so they may
    overlap. Tensors are compared in float32, as `preprocessing.restore` hands them on."""
    if _is_tensor(probabilities):
        probabilities = probabilities.float()
        if _off_cpu(probabilities):
            return probabilities > threshold
    return _host(probabilities) > threshold


@lru_cache(maxsize=None)
def _label_table(convention: str) -> np.ndarray:
    """uint8[8]: the label of a voxel whose WT, TC, ET masks are bits 0, 1, 2 of the index."""
    bits = np.array([[(i >> k) & 1 for i in range(8)] for k in range(len(C.REGIONS))], dtype=bool)
    return C.regions_to_labels(bits, convention)


def label_map(regions: Any, convention: str = "2021") -> Any:
    """BraTS label map (uint8) from region masks with nnU-Net's region order (WT, then TC, then ET
    painted over): `conventions.regions_to_labels` per voxel, through a table of its 8 possible answers."""
    regions = regions if _off_cpu(regions) else _host(regions)
    if regions.shape[0] != len(C.REGIONS):
        raise BraTSInputError(f"expected {len(C.REGIONS)} region masks (WT, TC, ET), got {regions.shape[0]}")
    table = _label_table(C.label_convention(convention).name)
    if _off_cpu(regions):
        return _label_map_torch(regions, table)
    r = (regions if regions.dtype == bool else regions != 0).view(np.uint8)
    idx = r[0] | (r[1] << 1)
    idx |= r[2] << 2
    return np.take(table, idx)


def _label_map_torch(regions: "torch.Tensor", table: np.ndarray) -> "torch.Tensor":
    import torch

    r = (regions != 0).to(torch.uint8)
    idx = r[0] | (r[1] << 1) | (r[2] << 2)
    return torch.as_tensor(table, device=regions.device)[idx.long()]


def consistent_regions(labels: Any, convention: str = "2021") -> Any:
    """Region masks implied by the label map (nested: ET in TC in WT), as evaluation sees them:
    `conventions.labels_to_regions` (label maps with values outside the convention are refused)."""
    conv = C.label_convention(convention)
    if _off_cpu(labels):
        if labels.is_floating_point() or labels.is_complex():
            return _like(consistent_regions(labels.cpu().numpy(), conv.name), labels)
        return _consistent_regions_torch(labels, conv)
    labels = _host(labels)
    if labels.dtype.kind not in "iu":
        return C.labels_to_regions(labels, conv.name)
    _check_allowed(labels, conv, np.zeros(labels.shape, dtype=bool))
    out = np.zeros((len(C.REGIONS), *labels.shape), dtype=bool)
    for m, region in zip(out, C.REGIONS):
        for v in conv.region_labels(region):
            m |= labels == v
    return out


def _consistent_regions_torch(labels: "torch.Tensor", conv: C.LabelConvention) -> "torch.Tensor":
    import torch

    _check_allowed(labels, conv, torch.zeros_like(labels, dtype=torch.bool))
    out = torch.zeros((len(C.REGIONS), *labels.shape), dtype=torch.bool, device=labels.device)
    for i, region in enumerate(C.REGIONS):
        for v in conv.region_labels(region):
            out[i] |= labels == v
    return out


def _check_allowed(labels: Any, conv: C.LabelConvention, allowed: Any) -> None:
    """Refuse (BraTSInputError naming the values) a label map with values outside `conv`."""
    for v in sorted(conv.allowed):
        allowed |= labels == v
    if not bool(allowed.all()):
        C.check_labels(labels.cpu().numpy() if _is_tensor(labels) else labels, conv.name)


def _like(array: np.ndarray, tensor: "torch.Tensor") -> "torch.Tensor":
    import torch

    return torch.as_tensor(array, device=tensor.device)


def volumes_ml(regions: Any, labels: Any, spacing_xyz: Sequence[float], convention: str) -> dict:
    """mL per region (from the label map, so WT/TC/ET are nested as scored) and per tissue."""
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    conv = C.label_convention(convention)
    regions, labels = (x.cpu().numpy() if _is_tensor(x) else np.asarray(x) for x in (regions, labels))
    return {
        "voxel_ml": voxel_ml,
        "regions_ml": {r: round(float(np.count_nonzero(m)) * voxel_ml, 4) for r, m in zip(C.REGIONS, regions)},
        "tissues_ml": {conv.titles[t]: round(float(np.count_nonzero(labels == v)) * voxel_ml, 4)
                       for t, v in conv.values.items()},
    }
