"""Inspect a case folder and list everything wrong with it (for `brats-mamba check` and the Slicer module).

Unlike `load_case`, which stops at the first unusable stage, this reads whatever can be read and
reports every problem, so a user fixes a case in one round.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.data import io
from BraTSMambaLib.data.case import CASE_KEYS, scan_folder
from BraTSMambaLib.errors import BraTSInputError


@dataclass
class FileReport:
    """One image file: geometry, pixel type and intensity range (None where it could not be read)."""

    file: str
    size: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    origin: tuple[float, ...] | None = None
    orientation: str | None = None
    pixel_type: str | None = None
    min: float | None = None
    max: float | None = None
    nonzero_fraction: float | None = None
    label_values: list[int] | None = None


@dataclass
class CaseReport:
    folder: str
    case_id: str | None
    naming: str | None
    label_convention: str | None
    files: dict[str, FileReport] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["usable"] = self.usable
        d["modalities_found"] = [k for k in C.MODALITIES if k in self.files]
        d["has_segmentation"] = "seg" in self.files
        return d


def _round(values) -> tuple[float, ...]:
    return tuple(round(float(v), 4) + 0.0 for v in values)


def check_case(folder: str | os.PathLike, *, labels: str | None = None, atol: float = 1e-3) -> CaseReport:
    """Report modalities, naming, geometry, intensities and label values of a case folder, with every problem.

    `labels` ("2021"/"2023") is the label convention to check a segmentation against; by default the
    naming's (2021 names -> 2021, 2023 names -> 2023; otherwise inferred from the values).
    """
    scan = scan_folder(folder)
    conv = C.label_convention(labels).name if labels is not None else None
    if conv is None and scan.naming in ("brats2021", "brats2023"):
        conv = scan.naming[-4:]
    report = CaseReport(str(scan.folder), scan.case_id, scan.naming, conv, problems=list(scan.problems))

    headers: dict[str, sitk.ImageFileReader] = {}
    for key in CASE_KEYS:
        path = scan.files.get(key)
        if path is None:
            continue
        fr = report.files[key] = FileReport(str(path))
        try:
            reader = io.read_header(path)
        except BraTSInputError as e:
            report.problems.append(str(e))
            continue
        fr.size = tuple(reader.GetSize())
        fr.spacing, fr.origin = _round(reader.GetSpacing()), _round(reader.GetOrigin())
        fr.pixel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        probs = io.header_problems(reader)
        if probs:
            report.problems += [f"{path}: {p}" for p in probs]
            continue
        fr.orientation = io.orientation_code(reader.GetDirection())
        headers[key] = reader

    ref_key = C.REFERENCE_MODALITY if C.REFERENCE_MODALITY in headers else next(iter(headers), None)
    for key, reader in headers.items():
        if key != ref_key:
            diffs = io.geometry_differences(reader, headers[ref_key], atol=atol, name=key, ref_name=ref_key)
            report.problems += [f"{scan.files[key]}: {d}" for d in diffs]

    for key, reader in headers.items():
        path, fr = scan.files[key], report.files[key]
        try:
            image = io.read_image(path, check_finite=False)
        except BraTSInputError as e:
            report.problems.append(str(e))
            continue
        arr = sitk.GetArrayViewFromImage(image)
        try:
            bad = io.count_nonfinite_file(path, image)
        except BraTSInputError as e:
            report.problems.append(str(e))
            continue
        if bad:
            report.problems.append(f"{path}: {bad} voxels are NaN or infinite")
        finite = np.isfinite(arr)
        values = arr if finite.all() else arr[finite]
        if values.size:
            fr.min, fr.max = float(values.min()), float(values.max())
            fr.nonzero_fraction = round(float(np.count_nonzero(values)) / arr.size, 4)
            if fr.min == fr.max and key != "seg":
                report.warnings.append(f"{path}: every voxel is {fr.min:g} (an empty image?)")
        if key == "seg":
            _check_seg(report, path, values, conv)
    if "seg" not in scan.files and scan.case_id:
        report.warnings.append(f"{scan.folder}: no segmentation (fine for inference; evaluation needs one)")
    return report


def _check_seg(report: CaseReport, path: Path, values: np.ndarray, conv: str | None) -> None:
    found = np.unique(values)
    if np.any(found != np.round(found)):
        report.problems.append(f"{path}: label map holds non-integer values")
        return
    report.files["seg"].label_values = [int(v) for v in found]
    if conv is None:
        conv = "2023" if 3 in found and 4 not in found else "2021"
        report.label_convention = conv
    try:
        C.check_labels(found, conv, source=str(path))
    except BraTSInputError as e:
        report.problems.append(str(e))


def format_report(report: CaseReport) -> str:
    """Human-readable multi-line summary of a CaseReport."""
    lines = [f"case      {report.case_id or '?'}  ({report.folder})",
             f"naming    {report.naming or '?'}"
             + (f", labels {report.label_convention}" if "seg" in report.files else "")]
    ref = report.files.get(C.REFERENCE_MODALITY)
    if ref and ref.size:
        lines.append(f"grid      size {ref.size}, spacing {ref.spacing} mm, origin {ref.origin}, "
                     f"orientation {ref.orientation}")
    for key in CASE_KEYS:
        fr = report.files.get(key)
        title = C.MODALITY_TITLES.get(key, "seg")
        if fr is None:
            lines.append(f"  {title:<6} -" if key != "seg" else "  seg    (none)")
            continue
        rng = f"range [{fr.min:g}, {fr.max:g}]" if fr.min is not None else "unreadable"
        extra = f" labels {fr.label_values}" if fr.label_values is not None else ""
        lines.append(f"  {title:<6} {Path(fr.file).name}  {fr.pixel_type or '?'}  {rng}{extra}")
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"problem: {p}" for p in report.problems]
    lines.append("usable: yes" if report.usable else f"usable: NO ({len(report.problems)} problem(s))")
    return "\n".join(lines)
