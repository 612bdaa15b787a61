"""Healthy-brain anatomy for the phantom: nilearn's bundled MNI152 (ICBM 2009a, 1 mm) maps on a BraTS grid.

nilearn ships the T1 template, the grey- and white-matter probability maps and the brain mask in
its package data (`nilearn/datasets/data`), so nothing is downloaded. The maps are turned from RAS to
the LPS voxel order of BraTS files, centred in the BraTS 240 x 240 x 155 mm box, and resized to the
requested grid.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: The BraTS field of view (mm) the brain is placed in before resizing to the requested grid.
BRATS_BOX_XYZ: tuple[int, int, int] = (240, 240, 155)


@dataclass(frozen=True)
class Anatomy:
    """Tissue maps on the output grid, numpy order (z, y, x), float32 fractions in 0..1."""

    t1: np.ndarray  # the MNI152 T1 template, 0..1
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray  # brain mask minus GM and WM
    mask: np.ndarray  # bool brain mask: everything outside is 0 in every modality, as in BraTS

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mask.shape


@functools.lru_cache(maxsize=1)
def _mni152_lps_zyx() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t1, gm, wm, mask) from nilearn, as (z, y, x) arrays with x towards Left and y towards Posterior."""
    from nilearn import datasets

    loaders = (
        datasets.load_mni152_template,
        datasets.load_mni152_gm_template,
        datasets.load_mni152_wm_template,
        datasets.load_mni152_brain_mask,
    )
    out = []
    for load in loaders:
        img = load(resolution=1)
        arr = np.asarray(img.get_fdata(dtype=np.float32))
        affine = img.affine
        if not np.allclose(np.abs(np.diag(affine)[:3]), 1.0) or not np.allclose(affine[:3, :3], np.diag(np.diag(affine)[:3])):
            raise RuntimeError(f"unexpected MNI152 template affine {affine.tolist()} from nilearn")
        for axis, want in ((0, -1.0), (1, -1.0), (2, 1.0)):  # RAS voxel axes -> L, P, S
            if np.sign(affine[axis, axis]) != want:
                arr = np.flip(arr, axis)
        out.append(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    t1, gm, wm, mask = out
    return t1, gm, wm, mask > 0.5


def _embed(arr: np.ndarray, center: np.ndarray, box_zyx: tuple[int, ...]) -> np.ndarray:
    """Place `arr` in a zero box of shape `box_zyx` with voxel `center` of `arr` at the box centre."""
    out = np.zeros(box_zyx, dtype=arr.dtype)
    src, dst = [], []
    for c, n_in, n_out in zip(center, arr.shape, box_zyx):
        offset = n_out // 2 - int(round(c))
        lo_in, hi_in = max(0, -offset), min(n_in, n_out - offset)
        src.append(slice(lo_in, hi_in))
        dst.append(slice(lo_in + offset, hi_in + offset))
    out[tuple(dst)] = arr[tuple(src)]
    return out


@functools.lru_cache(maxsize=4)
def brain_anatomy(shape_xyz: tuple[int, int, int]) -> Anatomy:
    """MNI152 tissue maps centred in the BraTS box and resized to `shape_xyz` (cached, read-only)."""
    t1, gm, wm, mask = _mni152_lps_zyx()
    idx = np.argwhere(mask)
    center = (idx.min(0) + idx.max(0)) / 2.0
    box = tuple(reversed(BRATS_BOX_XYZ))
    maps = [_embed(a, center, box) for a in (t1, gm, wm, mask.astype(np.float32))]
    target = tuple(reversed(tuple(int(s) for s in shape_xyz)))
    if target != box:
        factors = [t / b for t, b in zip(target, box)]
        maps = [
            ndimage.zoom(a, factors, order=1, mode="grid-constant", grid_mode=True, prefilter=False) for a in maps
        ]
        maps = [a[tuple(slice(0, t) for t in target)] for a in maps]
    t1, gm, wm, m = maps
    mask = m > 0.5
    gm = np.where(mask, np.clip(gm, 0.0, 1.0), 0.0).astype(np.float32)
    wm = np.where(mask, np.clip(wm, 0.0, 1.0), 0.0).astype(np.float32)
    csf = np.where(mask, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0).astype(np.float32)
    anat = Anatomy(np.clip(t1, 0.0, 1.0).astype(np.float32), gm, wm, csf, mask)
    for a in (anat.t1, anat.gm, anat.wm, anat.csf, anat.mask):
        a.setflags(write=False)
    return anat
