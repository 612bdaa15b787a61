"""A BraTS case (four co-registered MRI modalities, optional label map): discovery, validation, loading.

Validation happens before any work: headers first (presence, 3D, scalar, same grid as the T1ce
reference within `atol`), then voxels (finite values, label values). Every problem found is reported
in one line, each naming its file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.data import io
from BraTSMambaLib.errors import BraTSInputError

CASE_KEYS: tuple[str, ...] = (*C.MODALITIES, "seg")


@dataclass
class BraTSCase:
    """Four modality images on one grid (keys = `conventions.MODALITIES`), optionally a label map.

    `labels` is the label convention of `seg` ("2021" or "2023"), detected or given at load time.
    """

    case_id: str
    images: dict[str, sitk.Image]
    paths: dict[str, Path]
    naming: str | None
    seg: sitk.Image | None = None
    seg_path: Path | None = None
    labels: str | None = None

    @classmethod
    def from_images(
        cls,
        images: Mapping[str, sitk.Image],
        case_id: str,
        *,
        seg: sitk.Image | None = None,
        paths: Mapping[str, Path] | None = None,
        seg_path: Path | None = None,
        naming: str | None = None,
        resample: bool = False,
        require_seg: bool = False,
        seg_convention: str | None = None,
        atol: float = 1e-3,
    ) -> "BraTSCase":
        """Build a case from in-memory images (e.g. Slicer volume nodes) with `load_case`'s validation."""
        names = {k: str((paths or {}).get(k, k)) for k in C.MODALITIES}
        missing = [k for k in C.MODALITIES if k not in images]
        extra = sorted(set(images) - set(C.MODALITIES))
        if missing or extra:
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"unknown modality keys {extra}"] if extra else []
            raise BraTSInputError(f"case {case_id}: {'; '.join(parts)} (expected {', '.join(C.MODALITIES)})")
        if require_seg and seg is None:
            raise BraTSInputError(f"case {case_id}: no segmentation given")
        imgs = {k: images[k] for k in C.MODALITIES}
        all_imgs = dict(imgs, **({"seg": seg} if seg is not None else {}))
        all_names = dict(names, seg=str(seg_path or "seg"))
        for k, img in all_imgs.items():
            if not isinstance(img, sitk.Image):
                raise BraTSInputError(f"{all_names[k]}: expected a SimpleITK image, got {type(img).__name__}")
        problems = _grid_problems(all_imgs, all_names, atol=atol, allow_mismatch=resample)
        _raise(problems)
        problems = [f"{all_names[k]}: {n} voxels are NaN or infinite" for k, img in all_imgs.items()
                    if (n := io.count_nonfinite(img))]
        _raise(problems)
        ref = imgs[C.REFERENCE_MODALITY]
        if resample:
            imgs = {k: resample_to(img, ref, label=False) for k, img in imgs.items()}
            if seg is not None:
                seg = resample_to(seg, ref, label=True)
        labels = None
        if seg is not None:
            labels = _seg_convention(seg, all_names["seg"], naming, seg_convention)
        return cls(case_id, imgs, {k: Path(v) for k, v in (paths or {}).items() if k in C.MODALITIES},
                   naming, seg, Path(seg_path) if seg_path else None, labels)

    @property
    def reference(self) -> sitk.Image:
        """The T1ce image: the grid every output of this case keeps."""
        return self.images[C.REFERENCE_MODALITY]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm, (x, y, z)."""
        return tuple(self.reference.GetSpacing())

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        return tuple(self.reference.GetSize())

    def array(self, dtype: np.dtype = np.float32) -> np.ndarray:
        """The (4, z, y, x) stack in `conventions.MODALITIES` order (T1, T1ce, T2, FLAIR)."""
        return np.stack([sitk.GetArrayViewFromImage(self.images[k]).astype(dtype, copy=False) for k in C.MODALITIES])

    def seg_array(self, convention: str | None = None) -> np.ndarray:
        """The label map as uint8 (z, y, x), converted to `convention` when given."""
        if self.seg is None:
            raise BraTSInputError(f"case {self.case_id}: has no segmentation")
        arr = sitk.GetArrayFromImage(self.seg)
        if convention is None or C.label_convention(convention).name == self.labels:
            return arr.astype(np.uint8, copy=False)
        return C.convert_labels(arr, self.labels or "2021", convention)


# --- discovery --------------------------------------------------------------------------------


@dataclass
class FolderScan:
    """What a folder holds: files matched to case keys, and every problem with them."""

    folder: Path
    case_id: str | None = None
    naming: str | None = None
    files: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def scan_folder(folder: str | os.PathLike) -> FolderScan:
    """Match the image files of a case folder to modalities (either BraTS naming, or nnU-Net `_000X`).

    Never raises for the folder's content: problems (nothing found, several cases or namings,
    duplicate or missing modalities) are collected in `.problems`.
    """
    scan = FolderScan(Path(folder))
    if not scan.folder.is_dir():
        scan.problems.append(f"{scan.folder}: not a folder" if scan.folder.exists() else f"{scan.folder}: not found")
        return scan
    matched: dict[tuple[str, str], dict[str, list[Path]]] = {}
    for p in sorted(scan.folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        parsed = C.parse_filename(p.name)
        if parsed:
            case_id, key, naming = parsed
            matched.setdefault((case_id, naming), {}).setdefault(key, []).append(p)
    if not matched:
        images = [p.name for p in sorted(scan.folder.iterdir()) if io.is_image_file(p)]
        what = f"image files found: {', '.join(images)}" if images else "no image files found"
        scan.problems.append(f"{scan.folder}: no BraTS case files "
                             f"(expected e.g. <case>_t1ce.nii.gz or <case>-t1c.nii.gz); {what}")
        return scan
    if len(matched) > 1:
        groups = [f"{cid} ({nm})" for cid, nm in sorted(matched)]
        groups = ", ".join(groups[:5]) + (f" and {len(groups) - 5} more" if len(groups) > 5 else "")
        scan.problems.append(f"{scan.folder}: holds files of several cases or namings: {groups}; "
                             "put one case per folder or give four paths")
    (scan.case_id, scan.naming), keys = max(matched.items(), key=lambda kv: (len(kv[1]), kv[0]))
    naming = C.NAMINGS[scan.naming]
    for key in CASE_KEYS:
        found = keys.get(key, [])
        if len(found) > 1:
            scan.problems.append(f"{scan.folder}: several {key} files: {', '.join(p.name for p in found)}")
        if found:
            scan.files[key] = found[0]
        elif key != "seg":
            scan.problems.append(f"{scan.folder}: missing {C.MODALITY_TITLES[key]} "
                                 f"(expected {naming.filename(scan.case_id, key)})")
    return scan


def find_case_files(folder: str | os.PathLike) -> tuple[str, str, dict[str, Path]]:
    """(case_id, naming, {key: path}) for a case folder; keys are modalities plus "seg" when present.

    BraTSInputError lists every problem (missing, duplicate or ambiguous files) with what was found.
    """
    scan = scan_folder(folder)
    _raise(scan.problems)
    return scan.case_id, scan.naming, scan.files


def find_cases(root: str | os.PathLike) -> list[Path]:
    """Every folder at or below `root` holding BraTS modality files, sorted (hidden folders skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise BraTSInputError(f"{root}: not a folder")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any((parsed := C.parse_filename(f)) and parsed[1] != "seg" for f in filenames if not f.startswith(".")):
            out.append(Path(dirpath))
    return sorted(out)


# --- loading and validation -------------------------------------------------------------------


def _raise(problems: list[str]) -> None:
    if problems:
        raise BraTSInputError("; ".join(problems))


def _grid_problems(objs: Mapping, names: Mapping[str, str], *, atol: float, allow_mismatch: bool) -> list[str]:
    """Header problems: not 3D / not scalar for each object, then grid differences from the T1ce."""
    problems = []
    usable = {}
    for key, obj in objs.items():
        probs = io.header_problems(obj) if isinstance(obj, sitk.ImageFileReader) else _image_problems(obj)
        problems += [f"{names[key]}: {p}" for p in probs]
        if not probs:
            usable[key] = obj
    ref = usable.get(C.REFERENCE_MODALITY)
    if ref is not None and not allow_mismatch:
        for key, obj in usable.items():
            if key != C.REFERENCE_MODALITY:
                diffs = io.geometry_differences(obj, ref, atol=atol, name=key, ref_name=C.REFERENCE_MODALITY)
                problems += [f"{names[key]}: {d}" for d in diffs]
    return problems


def _image_problems(image: sitk.Image) -> list[str]:
    problems = []
    if image.GetDimension() != 3:
        problems.append(f"is {image.GetDimension()}D (size {image.GetSize()}), expected a 3D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        problems.append(f"has {image.GetNumberOfComponentsPerPixel()} components per voxel, expected a scalar image")
    return problems


def resample_to(image: sitk.Image, reference: sitk.Image, *, label: bool) -> sitk.Image:
    """`image` on `reference`'s grid: linear for intensities, nearest neighbour for labels; 0 outside."""
    if not io.geometry_differences(image, reference, atol=1e-6):
        return image
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, reference, sitk.Transform(), interp, 0.0, image.GetPixelID())


def _seg_convention(seg: sitk.Image, name: str, naming: str | None, convention: str | None) -> str:
    """Check the label values and return the convention they follow ("2021" or "2023")."""
    if convention is not None:
        conv = C.label_convention(convention).name
    elif naming == "brats2023":
        conv = "2023"
    elif naming == "brats2021":
        conv = "2021"
    else:
        values = set(np.unique(sitk.GetArrayViewFromImage(seg)).tolist())
        conv = "2023" if 3 in values and 4 not in values else "2021"
    C.check_labels(sitk.GetArrayViewFromImage(seg), conv, source=name)
    return conv


def load_case(
    source: str | os.PathLike | Mapping[str, str | os.PathLike],
    *,
    case_id: str | None = None,
    resample: bool = False,
    require_seg: bool = False,
    seg_convention: str | None = None,
    atol: float = 1e-3,
) -> BraTSCase:
    """Load and validate a case from a folder (either BraTS naming) or a mapping key -> path.

    Mapping keys are `conventions.MODALITIES` plus optional "seg". All four modalities must be 3D
    scalar volumes on the T1ce grid (size, spacing, origin, direction within `atol`) with finite
    values; `resample=True` resamples the others (linear) and the label map (nearest) onto the T1ce
    grid instead of failing. Label values are checked against `seg_convention`, or the convention
    of the naming (2021 names: {0,1,2,4}; 2023 names: {0,1,2,3}).
    """
    if isinstance(source, Mapping):
        files = {str(k).lower(): Path(v) for k, v in source.items()}
        unknown = sorted(set(files) - set(CASE_KEYS))
        missing = [k for k in C.MODALITIES if k not in files]
        if unknown or missing:
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"unknown keys {unknown}"] if unknown else []
            raise BraTSInputError(f"case paths: {'; '.join(parts)} (expected {', '.join(CASE_KEYS)})")
        parsed = [C.parse_filename(p.name) for k, p in files.items()]
        namings = {p[2] for p in parsed if p}
        naming = namings.pop() if len(namings) == 1 and all(parsed) else None
        ids = {p[0] for p in parsed if p}
        cid = case_id or (ids.pop() if len(ids) == 1 else io.strip_extension(files[C.REFERENCE_MODALITY]))
    else:
        folder = Path(source)
        if folder.is_file():
            raise BraTSInputError(f"{folder}: expected a case folder (or four paths), got a file")
        cid, naming, files = find_case_files(folder)
        cid = case_id or cid
    if require_seg and "seg" not in files:
        raise BraTSInputError(f"case {cid}: no segmentation file (expected e.g. "
                              f"{C.NAMINGS[naming if naming in ('brats2021', 'brats2023') else 'brats2021'].filename(cid, 'seg')})")
    headers = {k: io.read_header(p) for k, p in files.items()}
    _raise(_grid_problems(headers, {k: str(p) for k, p in files.items()}, atol=atol, allow_mismatch=resample))
    images = {k: io.read_image(p, check_finite=True) for k, p in files.items()}
    seg = images.pop("seg", None)
    return BraTSCase.from_images(
        images, cid, seg=seg, paths=files, seg_path=files.get("seg"), naming=naming, resample=resample,
        require_seg=require_seg, seg_convention=seg_convention, atol=atol,
    )
