"""Region probabilities -> overlapping WT/TC/ET masks -> BraTS label map, and their volumes."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from BraTSMambaLib.data import conventions as C

THRESHOLD = 0.5


def region_masks(probabilities: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """(3, z, y, x) bool masks in REGIONS order; each region thresholded on its own sigmoid, so they may overlap."""
    return np.asarray(probabilities) > threshold


def label_map(regions: np.ndarray, convention: str = "2021") -> np.ndarray:
    """BraTS label map from region masks with nnU-Net's region order (WT, then TC, then ET painted over)."""
    return C.regions_to_labels(regions, convention)


def consistent_regions(labels: np.ndarray, convention: str = "2021") -> np.ndarray:
    """Region masks implied by the label map (nested: ET in TC in WT), as evaluation sees them."""
    return C.labels_to_regions(labels, convention)


def volumes_ml(regions: np.ndarray, labels: np.ndarray, spacing_xyz: Sequence[float], convention: str) -> dict:
    """mL per region (from the label map, so WT/TC/ET are nested as scored) and per tissue."""
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    conv = C.label_convention(convention)
    return {
        "voxel_ml": voxel_ml,
        "regions_ml": {r: round(float(np.count_nonzero(m)) * voxel_ml, 4) for r, m in zip(C.REGIONS, regions)},
        "tissues_ml": {conv.titles[t]: round(float(np.count_nonzero(labels == v)) * voxel_ml, 4)
                       for t, v in conv.values.items()},
    }
