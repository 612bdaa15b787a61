"""nnU-Net's preprocessing of a BraTS case on the GPU, where it is the same arithmetic as on the CPU.

`preprocessing.preprocess` runs nnU-Net's own `DefaultPreprocessor` on the CPU: about 0.18 s per case on the
H200 host, most of it scipy's `binary_fill_holes` (docs/inference.md). For the configuration every BraTS package
uses (z-score over the brain mask in every channel, no resampling because the case already has the
training spacing) the same steps run here on the predictor's device, and only there:

* crop to the nonzero region (the bounding box is `preprocessing.nonzero_box`, the same as on the CPU),
* the brain mask: voxels nonzero in any channel, holes filled as `scipy.ndimage.binary_fill_holes` fills
  them (background 6-connected to the box border stays background: `fill_holes`, exact),
* per channel z-score over the mask, values outside it left as they are (zero).

The crop and the mask are identical to nnU-Net's; the means and standard deviations are summed in float64
where numpy sums float32, so values can differ in the last bits (tests: `Testing/test_device_preprocessing.py`
holds the result against nnU-Net's). Any other configuration (resampling, other normalisations, masks off,
an all-zero case) returns None and the caller runs nnU-Net's classes. BRATSMAMBA_DEVICE_PREPROCESS=0 turns
this path off.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from BraTSMambaLib.inference.preprocessing import nonzero_box, training_spacing, zscore_over_mask
from BraTSMambaLib.ssm.settings import env_switch

if TYPE_CHECKING:
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

ENV_VAR = "BRATSMAMBA_DEVICE_PREPROCESS"
#: Rounds of `fill_holes` after which it gives up (the caller then uses nnU-Net's CPU path); a round
#: crosses every straight run of background along each axis, so real masks settle in a few.
MAX_FILL_ROUNDS = 256
_UPLOADABLE = (np.int8, np.uint8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64)


def enabled() -> bool:
    """False when BRATSMAMBA_DEVICE_PREPROCESS=0."""
    return env_switch(ENV_VAR)


def _grow_along(reach: torch.Tensor, background: torch.Tensor, dim: int) -> torch.Tensor:
    """`reach` spread through every straight run of background along `dim` that it touches."""
    n = reach.shape[dim]
    runs = torch.cumsum(~background, dim=dim)   # int64: one id per run (with the voxel before it)
    shape = list(reach.shape)
    shape[dim] = n + 1
    touched = torch.zeros(shape, dtype=torch.int32, device=reach.device)
    touched.scatter_reduce_(dim, runs, reach.to(torch.int32), reduce="amax")
    return reach | (torch.gather(touched, dim, runs).bool() & background)


def fill_holes(mask: torch.Tensor, max_rounds: int = MAX_FILL_ROUNDS) -> torch.Tensor | None:
    """`scipy.ndimage.binary_fill_holes(mask)` for a 3-D boolean tensor (its default structure: background
    voxels 6-connected to the border are kept, all others filled); None when it has not settled after
    `max_rounds` rounds."""
    background = ~mask
    border = torch.zeros_like(mask)
    border[0], border[-1] = True, True
    border[:, 0], border[:, -1] = True, True
    border[:, :, 0], border[:, :, -1] = True, True
    reach = background & border
    count = int(reach.sum())
    for _ in range(max_rounds):
        for dim in range(3):
            reach = _grow_along(reach, background, dim)
        new = int(reach.sum())
        if new == count:
            return ~reach
        count = new
    return None


def _eligible(cm: "ConfigurationManager", spacing_t: Sequence[float], shape_t: Sequence[int]) -> bool:
    """Whether nnU-Net would z-score every channel over the mask and leave the shape as it is."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    if not zscore_over_mask(cm):
        return False
    new_shape = compute_new_shape(shape_t, spacing_t, training_spacing(cm, spacing_t))
    return tuple(int(v) for v in new_shape) == tuple(int(v) for v in shape_t)


def preprocess_on_device(channels: Sequence[np.ndarray], spacing_zyx: Sequence[float], pm: "PlansManager",
                         cm: "ConfigurationManager", device: torch.device | str,
                         ) -> tuple[torch.Tensor, dict] | None:
    """(data (4, z, y, x) float32 on `device`, nnU-Net properties as `preprocessing.preprocess` returns
    them) for the configurations described above, else None (use `preprocessing.preprocess`)."""
    if not enabled():
        return None
    device = torch.device(device)
    channels = [np.asarray(c) for c in channels]
    full_shape = tuple(channels[0].shape)
    box = nonzero_box(channels, margin=0)
    if box is None or len(full_shape) != 3:
        return None
    tf = list(pm.transpose_forward)
    spacing_t = [float(spacing_zyx[i]) for i in tf]
    box_shape_t = [box[i].stop - box[i].start for i in tf]
    if len(cm.normalization_schemes) != len(channels) or not _eligible(cm, spacing_t, box_shape_t):
        return None
    data = torch.empty((len(channels), *(b.stop - b.start for b in box)), dtype=torch.float32, device=device)
    for i, c in enumerate(channels):
        part = c[box] if c.dtype.type in _UPLOADABLE else c[box].astype(np.float32)
        data[i] = torch.from_numpy(np.ascontiguousarray(part)).to(device, non_blocking=False).float()
    if tf != [0, 1, 2]:
        data = data.permute(0, *(t + 1 for t in tf)).contiguous()
    mask = fill_holes((data != 0).any(dim=0))
    if mask is None:
        return None
    for i in range(data.shape[0]):
        inside = data[i][mask]
        values = inside.double()
        mean = values.mean().float()
        std = torch.clamp(values.std(correction=0).float(), min=1e-8)
        data[i][mask] = (inside - mean) / std
    shape_t = tuple(int(s) for s in data.shape[1:])
    props = {
        "spacing": [float(s) for s in spacing_zyx],
        "shape_before_cropping": tuple(full_shape[i] for i in tf),
        "bbox_used_for_cropping": [[box[i].start, box[i].stop] for i in tf],
        "shape_after_cropping_and_before_resampling": shape_t,
    }
    return data, props
