"""Segmentation outputs, each written atomically in the input geometry.

- `<case>_seg.nii.gz`: BraTS label map (2021 {0,1,2,4} or 2023 {0,1,2,3}).
- `<case>.seg.nrrd`: Slicer segmentation with three overlapping segments WT, TC, ET (one layer each,
  written with slicerio), named, coloured and coded from `conventions`.
- `<case>_volumes.json`: mL per region and tissue, model, device, timings (written last: its presence
  marks a complete case).
- `<case>_probabilities.nii.gz` (optional): WT/TC/ET probabilities as a 3-component float image.
- `<case>_overlay.png` (optional): axial, coronal and sagittal slices through the tumour centre.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.data import io
from BraTSMambaLib.errors import BraTSInputError

SEGMENTATION_CONTEXT = "Segmentation category and type - DICOM master list"


def output_paths(out_dir: str | os.PathLike, case_id: str, *, probabilities: bool = False,
                 overlay: bool = False) -> dict[str, Path]:
    """The files one case produces, keyed by kind."""
    out = Path(out_dir)
    paths = {"seg": out / f"{case_id}_seg.nii.gz", "nrrd": out / f"{case_id}.seg.nrrd"}
    if probabilities:
        paths["probabilities"] = out / f"{case_id}_probabilities.nii.gz"
    if overlay:
        paths["overlay"] = out / f"{case_id}_overlay.png"
    paths["volumes"] = out / f"{case_id}_volumes.json"
    return paths


def ijk_to_lps(reference: sitk.Image) -> np.ndarray:
    """4x4 voxel-index (i, j, k) to LPS matrix of a SimpleITK image."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3) @ np.diag(reference.GetSpacing())
    m[:3, 3] = reference.GetOrigin()
    return m


def region_segments() -> list[dict[str, Any]]:
    """slicerio segment fields (id, name, colour, terminology) for WT, TC, ET."""
    return [
        {
            "id": region,
            "name": region,
            "color": list(C.REGION_COLORS[region]),
            "terminology": {
                "contextName": SEGMENTATION_CONTEXT,
                "category": list(C.TERMINOLOGY_CATEGORY),
                "type": list(C.TERMINOLOGY_TYPE),
            },
            "tags": {"Description": C.REGION_TITLES[region]},
        }
        for region in C.REGIONS
    ]


def write_seg_nrrd(regions: np.ndarray, reference: sitk.Image, path: Path, *, overwrite: bool = False) -> Path:
    """Write (3, z, y, x) region masks as a Slicer .seg.nrrd with overlapping WT, TC, ET segments.

    Each region gets its own layer (a 4D 'list' nrrd, as Slicer stores overlapping segments), so every
    segment is complete even where it overlaps the others.
    """
    import slicerio

    shape_ijk = tuple(reference.GetSize())
    seg = slicerio.create_segmentation(shape_ijk, ijk_to_lps(reference))
    seg["voxels"] = np.zeros((len(C.REGIONS), *shape_ijk), dtype=np.uint8)
    for layer, (fields, mask) in enumerate(zip(region_segments(), regions)):
        ijk = np.asarray(mask, dtype=bool).transpose(2, 1, 0)
        seg["voxels"][layer][ijk] = 1
        idx = np.nonzero(ijk)
        extent = [int(v) for a in idx for v in (a.min(), a.max())] if idx[0].size else [0, -1, 0, -1, 0, -1]
        seg["segments"].append(dict(fields, labelValue=1, layer=layer, extent=extent))
    seg["containedRepresentationNames"] = ["Binary labelmap"]
    seg["masterRepresentation"] = "Binary labelmap"
    with io.atomic_path(path, overwrite=overwrite) as tmp:
        slicerio.write_segmentation(str(tmp), seg, compression_level=1)
    return path


def write_probabilities(prob: np.ndarray, reference: sitk.Image, path: Path, *, overwrite: bool = False) -> Path:
    """(3, z, y, x) probabilities as a 3-component float32 image with the reference geometry."""
    img = sitk.GetImageFromArray(np.moveaxis(np.asarray(prob, dtype=np.float32), 0, -1), isVector=True)
    img.CopyInformation(reference)
    return io.write_image(img, path, overwrite=overwrite)


def write_json(data: Mapping[str, Any], path: Path, *, overwrite: bool = False) -> Path:
    return io.atomic_write_text(path, json.dumps(data, indent=2) + "\n", overwrite=overwrite)


def tumour_centre(mask: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) voxel index of the mask's centre of mass, or the volume centre when it is empty."""
    if not mask.any():
        return tuple(s // 2 for s in mask.shape)
    return tuple(int(round(float(c.mean()))) for c in np.nonzero(mask))


def write_overlay(background: np.ndarray, regions: np.ndarray, spacing_xyz: tuple[float, float, float],
                  path: Path, *, title: str = "", overwrite: bool = False) -> Path:
    """PNG with axial, coronal and sagittal slices through the WT centre, regions drawn over `background`.

    `background` is a (z, y, x) image (FLAIR), `regions` (3, z, y, x); colours from conventions.
    Slices are shown with their physical aspect ratio.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    z, y, x = tumour_centre(regions[0].astype(bool))
    sx, sy, sz = spacing_xyz
    bg = np.asarray(background, dtype=np.float32)
    nz = bg[bg > 0]
    lo, hi = (np.percentile(nz, [0.5, 99.5]) if nz.size else (0.0, 1.0))
    views = [("axial", lambda a: a[z], sy / sx), ("coronal", lambda a: a[:, y][::-1], sz / sx),
             ("sagittal", lambda a: a[:, :, x][::-1], sz / sy)]
    fig = Figure(figsize=(12, 4.4), dpi=100)
    axes = fig.subplots(1, 3)
    for ax, (name, take, aspect) in zip(axes, views):
        ax.imshow(take(bg), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect,
                  interpolation="nearest")
        for region, mask in zip(C.REGIONS, regions):
            sl = take(np.asarray(mask, dtype=bool))
            rgba = np.zeros((*sl.shape, 4), dtype=np.float32)
            rgba[sl] = (*C.REGION_COLORS[region], 0.45)
            ax.imshow(rgba, aspect=aspect, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.legend(handles=[Patch(color=C.REGION_COLORS[r], label=f"{r} ({C.REGION_TITLES[r]})") for r in C.REGIONS],
               loc="lower center", ncol=3, frameon=False)
    if title:
        fig.suptitle(title)
    with io.atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    return path


def check_targets(paths: Mapping[str, Path], overwrite: bool) -> None:
    """Refuse before any work when an output exists and `overwrite` is off."""
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise BraTSInputError(f"{existing[0]}: already exists (use --overwrite to replace it"
                              f"{f'; {len(existing) - 1} more outputs exist' if len(existing) > 1 else ''})")
    dirs = [str(p) for p in paths.values() if p.is_dir()]
    if dirs:
        raise BraTSInputError(f"{dirs[0]}: is a folder, expected a file path")
