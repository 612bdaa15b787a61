"""Synthetic BraTS case: MNI152 anatomy, four MRI contrasts and a seeded glioma (see docs/data.md).

The healthy brain comes from the MNI152 template nilearn ships (`phantom_anatomy`). Each tissue
(CSF, grey matter, white matter, edema, necrosis, enhancing tumour) gets a mean intensity per
modality; the tumour is a noise-deformed ellipsoidal core (enhancing rim around a necrotic centre)
inside a larger edema that prefers white matter and spares CSF. A smooth multiplicative bias field
and Rician noise finish each modality; outside the brain every voxel is 0, as in skull-stripped
BraTS data. Everything random comes from one `numpy.random.Generator(seed)`, so a seed and a grid
give the same bytes every time.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.data import io
from BraTSMambaLib.data.case import BraTSCase
from BraTSMambaLib.data.phantom_anatomy import BRATS_BOX_XYZ, Anatomy, brain_anatomy
from BraTSMambaLib.errors import BraTSInputError

DEFAULT_SHAPE_XYZ: tuple[int, int, int] = BRATS_BOX_XYZ

#: Mean intensity of each tissue per modality, on the scale of BraTS 2018-2021 raw files (int16).
TISSUE_MEANS: Mapping[str, Mapping[str, float]] = {
    #            CSF     GM      WM     edema  necrosis enhancing
    "t1":    {"csf": 130, "gm": 300, "wm": 420, "edema": 310, "necrosis": 230, "enhancing": 310},
    "t1ce":  {"csf": 40,  "gm": 85,  "wm": 105, "edema": 82,  "necrosis": 60,  "enhancing": 140},
    "t2":    {"csf": 1500, "gm": 760, "wm": 520, "edema": 1000, "necrosis": 1350, "enhancing": 1000},
    "flair": {"csf": 60,  "gm": 290, "wm": 230, "edema": 400, "necrosis": 300, "enhancing": 400},
}
TISSUES_NORMAL: tuple[str, ...] = ("csf", "gm", "wm")

#: Volume ranges (drawn log-uniformly / uniformly), in mL of the BraTS 240 x 240 x 155 mm field of view.
WT_VOLUME_ML: tuple[float, float] = (30.0, 110.0)
TC_FRACTION: tuple[float, float] = (0.2, 0.55)  # tumour core / whole tumour
NECROSIS_FRACTION: tuple[float, float] = (0.15, 0.6)  # necrosis / tumour core
NOISE_FRACTION = 0.035  # Rician noise sigma as a fraction of the white-matter mean
BIAS_STRENGTH = 0.12  # std of the bias polynomial's coefficients (log scale)


def phantom_case_id(seed: int) -> str:
    return f"BraTSPhantom_s{int(seed)}"


def _spacing3(spacing: float | tuple[float, float, float]) -> tuple[float, float, float]:
    sp = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(s > 0 for s in sp):
        raise BraTSInputError(f"phantom spacing must be one or three positive numbers, got {spacing!r}")
    return sp


def _check_shape(shape_xyz) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape_xyz)
    if len(shape) != 3 or min(shape) < 16 or max(shape) > 1024:
        raise BraTSInputError(f"phantom shape must be three sizes in 16..1024 (x y z), got {tuple(shape_xyz)}")
    return shape


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], start_mm: np.ndarray, mm_zyx: np.ndarray, extent_mm: float,
    cell_mm: float,
) -> np.ndarray:
    """Smooth unit-variance random field on a box grid whose first voxel lies `start_mm` from the centre.

    The field lives on its own lattice in mm, so the tumour shape does not depend on the output grid.
    """
    n = int(np.ceil(2 * extent_mm / cell_mm)) + 5
    field = ndimage.gaussian_filter(rng.standard_normal((n, n, n)).astype(np.float32), sigma=1.5, mode="wrap")
    field /= field.std() + 1e-12
    scale = np.asarray(mm_zyx, dtype=float) / cell_mm
    offset = np.asarray(start_mm, dtype=float) / cell_mm + (n - 1) / 2.0
    return ndimage.affine_transform(field, scale, offset=offset, output_shape=shape, order=1, mode="nearest")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _pick_center(rng: np.random.Generator, anat: Anatomy, mm_zyx: np.ndarray, margin_mm: float) -> np.ndarray:
    """A white-matter voxel (z, y, x) at least `margin_mm` from the brain surface, chosen by `rng`."""
    step = max(1, int(round(4.0 / float(mm_zyx.min()))))
    coarse = anat.mask[::step, ::step, ::step]
    depth = ndimage.distance_transform_edt(coarse, sampling=mm_zyx * step)
    wm = anat.wm[::step, ::step, ::step]
    zs = np.nonzero(coarse.any(axis=(1, 2)))[0]
    cerebrum = np.zeros_like(coarse)
    cerebrum[zs[0] + int(0.4 * (zs[-1] - zs[0])):] = True  # gliomas are mostly supratentorial
    for need in (margin_mm, 0.75 * margin_mm, 0.5 * margin_mm, 0.0):
        cand = np.argwhere((depth >= need) & (wm > 0.5) & (depth > 0) & cerebrum)
        if len(cand):
            break
    else:
        cand = np.argwhere(depth == depth.max())
    c = cand[rng.integers(len(cand))] * step + rng.integers(0, step, size=3)
    return np.minimum(c, np.array(anat.shape) - 1)


def _smallest(score: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:
    """The `count` allowed voxels with the lowest score (a level set of `score` with a chosen volume)."""
    out = np.zeros(score.shape, dtype=bool)
    idx = np.flatnonzero(allowed)
    if count <= 0 or idx.size == 0:
        return out
    if count >= idx.size:
        out[idx] = True
        return out
    keep = np.argpartition(score[idx], count - 1)[:count]
    out[idx[keep]] = True
    return out


def _tumour(rng: np.random.Generator, anat: Anatomy, mm_zyx: np.ndarray):
    """Labels (NCR, ED, ET as bool arrays) and the bounding box (slices) they live in.

    Shapes are level sets of noise-deformed ellipsoid radii; the level is chosen so that each
    region gets its drawn volume (in mm^3 of the BraTS box), so sizes stay in range whatever the shape.
    """
    wt_ml = float(np.exp(rng.uniform(*np.log(WT_VOLUME_ML))))
    tc_ml = wt_ml * rng.uniform(*TC_FRACTION)
    ncr_ml = tc_ml * rng.uniform(*NECROSIS_FRACTION)
    r_wt = (3.0 * wt_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)  # mm
    r_tc = (3.0 * tc_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    axes_tc = np.exp(rng.normal(0.0, 0.15, 3))
    axes_tc /= np.cbrt(axes_tc.prod())
    axes_wt = np.exp(rng.normal(0.0, 0.2, 3))
    axes_wt /= np.cbrt(axes_wt.prod())
    rot_tc, rot_wt = _random_rotation(rng), _random_rotation(rng)
    offset_wt = rng.normal(0.0, 0.12 * r_wt, 3)  # edema is rarely centred on the core
    center = _pick_center(rng, anat, mm_zyx, margin_mm=1.1 * r_tc)

    extent = 1.7 * r_wt * max(axes_wt.max(), 1.0) + np.abs(offset_wt).max()
    half = np.ceil(extent / mm_zyx).astype(int)
    lo = np.maximum(center - half, 0)
    hi = np.minimum(center + half + 1, anat.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    shape = tuple(int(n) for n in hi - lo)
    start = (lo - center) * mm_zyx
    axis_mm = [(np.arange(n) * s + s0).astype(np.float32) for n, s, s0 in zip(shape, mm_zyx, start)]
    voxel_ml = float(np.prod(mm_zyx)) / 1000.0

    def radius(rot, axes, r, shift):
        """Normalised ellipsoid radius (1 on the surface) over the box, without (N, 3) point lists."""
        g = [(ax - sh).reshape([-1 if i == k else 1 for i in range(3)]) for k, (ax, sh) in enumerate(zip(axis_mm, shift))]
        return np.sqrt(sum(((rot[k, 0] * g[0] + rot[k, 1] * g[1] + rot[k, 2] * g[2]) / (axes[k] * r)) ** 2
                           for k in range(3))).ravel()

    def noise(cell_mm):
        return _smooth_noise(rng, shape, start, mm_zyx, extent, cell_mm).ravel()

    d_tc = radius(rot_tc, axes_tc, r_tc, (0.0, 0.0, 0.0)) * (1.0 + 0.2 * noise(5.0))
    d_ncr = d_tc * (1.0 + 0.15 * noise(4.0))
    d_wt = radius(rot_wt, axes_wt, r_wt, offset_wt) * (1.0 + 0.25 * noise(7.0))

    mask = anat.mask[box].ravel()
    wm = anat.wm[box].ravel()
    csf = anat.csf[box].ravel()
    tc = _smallest(d_tc, mask, int(round(tc_ml / voxel_ml)))
    ncr = _smallest(d_ncr, tc, int(round(ncr_ml / voxel_ml)))
    et = tc & ~ncr
    # edema: a thin collar around the core, then the rest following white matter and sparing CSF
    collar = _shell(tc.reshape(shape), mm_zyx, 2.0).ravel() & mask & ~tc
    score = np.where(collar, -np.inf, d_wt * (1.25 - 0.35 * wm))
    ed = _smallest(score, mask & ~tc & ((csf < 0.6) | collar), int(round(wt_ml / voxel_ml)) - int(tc.sum()))
    ed = _connected_to(ed.reshape(shape) | tc.reshape(shape), tc.reshape(shape)).ravel() & ed
    return box, shape, ncr.reshape(shape), ed.reshape(shape), et.reshape(shape)


def _connected_to(region: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The connected components of `region` that touch `seed` (drops stray edema islands)."""
    labels, _ = ndimage.label(region)
    keep = np.unique(labels[seed & region])
    return np.isin(labels, keep[keep > 0])


def _shell(region: np.ndarray, mm_zyx: np.ndarray, width_mm: float) -> np.ndarray:
    """Voxels within `width_mm` outside `region`."""
    if not region.any():
        return region
    return ndimage.distance_transform_edt(~region, sampling=mm_zyx) <= width_mm


def _bias_at(rng: np.random.Generator, coords: tuple[np.ndarray, ...], shape: tuple[int, ...]) -> np.ndarray:
    """exp(second-order polynomial) of the normalised coordinates: a smooth multiplicative bias field."""
    u = [(c.astype(np.float32) / max(n - 1, 1)) * 2.0 - 1.0 for c, n in zip(coords, shape)]
    lin = rng.normal(0.0, BIAS_STRENGTH, 3)
    quad = rng.normal(0.0, BIAS_STRENGTH / 2, 6)
    log = sum(l * a for l, a in zip(lin, u))
    pairs = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]
    log = log + sum(q * u[i] * u[j] for q, (i, j) in zip(quad, pairs))
    return np.exp(log).astype(np.float32)


def make_phantom(
    seed: int = 0,
    shape_xyz: tuple[int, int, int] = DEFAULT_SHAPE_XYZ,
    spacing: float | tuple[float, float, float] = 1.0,
) -> BraTSCase:
    """An in-memory synthetic BraTS case (int16 modalities, uint8 label map in the 2021 convention).

    The brain fills the grid as it fills BraTS's 240 x 240 x 155 mm box, whatever `shape_xyz`;
    `spacing` (mm) is written into the images. Deterministic in (seed, shape_xyz, spacing).
    """
    shape = _check_shape(shape_xyz)
    sp = _spacing3(spacing)
    rng = np.random.default_rng(int(seed))
    anat = brain_anatomy(shape)
    mm_zyx = np.array([b / s for b, s in zip(reversed(BRATS_BOX_XYZ), reversed(shape))])  # anatomical mm per voxel

    box, box_shape, ncr, ed, et = _tumour(rng, anat, mm_zyx)
    weights = {  # partial-volume fractions of each tumour tissue (a smoothed partition stays a partition)
        t: ndimage.gaussian_filter(m.astype(np.float32), sigma=0.6 / mm_zyx)
        for t, m in (("edema", ed), ("necrosis", ncr), ("enhancing", et))
    }
    w_sum = sum(weights.values())
    texture = 1.0 + 0.08 * _smooth_noise(rng, box_shape, np.zeros(3) - np.array(box_shape) * mm_zyx / 2, mm_zyx,
                                         float(max(np.array(box_shape) * mm_zyx)) / 2, 3.0)

    coords = np.nonzero(anat.mask)
    frac = {t: getattr(anat, t)[coords] for t in TISSUES_NORMAL}
    mask_box = anat.mask[box]
    conv = C.label_convention("2021")
    images: dict[str, sitk.Image] = {}
    for key in C.MODALITIES:
        means = {t: m * (1.0 + rng.normal(0.0, 0.04)) for t, m in TISSUE_MEANS[key].items()}
        vol = np.zeros(anat.shape, dtype=np.float32)
        vol[coords] = sum(frac[t] * means[t] for t in TISSUES_NORMAL)
        sub = vol[box]
        tumour = sum(weights[t] * means[t] for t in weights) * texture
        vol[box] = np.where(mask_box, sub * (1.0 - w_sum) + tumour, 0.0)
        signal = vol[coords] * _bias_at(rng, coords, anat.shape)
        sigma = NOISE_FRACTION * means["wm"]
        noisy = np.hypot(signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32),
                         sigma * rng.standard_normal(signal.shape, dtype=np.float32))
        out = np.zeros(anat.shape, dtype=np.int16)
        out[coords] = np.clip(np.rint(noisy), 1, np.iinfo(np.int16).max).astype(np.int16)
        images[key] = _image(out, sp)

    seg = np.zeros(anat.shape, dtype=np.uint8)
    seg_box = np.zeros(box_shape, dtype=np.uint8)
    seg_box[ed] = conv.values["edema"]
    seg_box[ncr] = conv.values["necrosis"]
    seg_box[et] = conv.values["enhancing"]
    seg[box] = seg_box
    return BraTSCase(phantom_case_id(seed), images, {}, "brats2021", _image(seg, sp), None, conv.name)


def _image(array: np.ndarray, spacing: tuple[float, float, float]) -> sitk.Image:
    """BraTS-like geometry: LPS identity direction, origin (0, -(ny-1)*sy, 0) as in BraTS files."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin((0.0, -(array.shape[1] - 1) * spacing[1], 0.0))
    return img


def write_phantom(
    out_dir: str | os.PathLike,
    seed: int = 0,
    shape_xyz: tuple[int, int, int] = DEFAULT_SHAPE_XYZ,
    *,
    spacing: float | tuple[float, float, float] = 1.0,
    overwrite: bool = False,
) -> Path:
    """Write a phantom as a BraTS-2021-style case folder `<case>_{t1,t1ce,t2,flair,seg}.nii.gz`.

    `out_dir` is the case folder. Existing files are refused unless `overwrite`; all five files
    appear together or not at all. Returns the folder.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BraTSInputError(f"{out}: exists and is not a folder")
    case_id = phantom_case_id(seed)
    naming = C.NAMINGS["brats2021"]
    targets = {k: out / naming.filename(case_id, k) for k in (*C.MODALITIES, "seg")}
    existing = [p.name for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise BraTSInputError(f"{out}: already holds {', '.join(existing)} (use --overwrite to replace)")
    case = make_phantom(seed, shape_xyz, spacing)
    created = not out.exists()
    try:
        with contextlib.ExitStack() as stack:
            for key, path in targets.items():
                tmp = stack.enter_context(io.atomic_path(path, overwrite=overwrite))
                image = case.seg if key == "seg" else case.images[key]
                try:
                    sitk.WriteImage(image, str(tmp), useCompression=True)
                except RuntimeError as e:
                    raise BraTSInputError(f"{path}: cannot write ({e})") from None
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return out
