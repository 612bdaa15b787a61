"""Evaluate label maps, files and folders of predictions against references, per region (WT, TC, ET)."""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BraTSMambaLib.data.conventions import (
    REGIONS,
    check_labels,
    label_convention,
    parse_filename,
)
from BraTSMambaLib.data.io import (
    geometry_differences,
    is_image_file,
    read_header,
    read_image,
    strip_extension,
)
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.metrics.binary import region_metrics

PathLike = str | os.PathLike

#: {region: {metric: value}} for one case.
CaseMetrics = dict[str, dict[str, float]]


def evaluate_labels(
    pred_labels: np.ndarray, ref_labels: np.ndarray, spacing_zyx: Sequence[float], convention: str | int = "2021",
    *, pred_name: str = "prediction", ref_name: str = "reference",
) -> CaseMetrics:
    """Metrics of every region (WT, TC, ET) for two (z, y, x) label maps in one label convention.

    Label values outside the convention raise BraTSInputError naming `pred_name` / `ref_name`.
    """
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise BraTSInputError(f"{pred_name}: shape {pred_labels.shape} differs from {ref_name} {ref_labels.shape}")
    conv = label_convention(convention).name
    pred_regions = _regions(pred_labels, conv, pred_name)
    ref_regions = _regions(ref_labels, conv, ref_name)
    return {r: region_metrics(pred_regions[i], ref_regions[i], spacing_zyx) for i, r in enumerate(REGIONS)}


def _regions(labels: np.ndarray, convention: str, source: str) -> list[np.ndarray]:
    check_labels(labels, convention, source)
    conv = label_convention(convention)
    return [np.isin(labels, conv.region_labels(r)) for r in REGIONS]


def spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    """SimpleITK (x, y, z) spacing reversed into numpy (z, y, x) order."""
    return tuple(float(s) for s in reversed(image.GetSpacing()[:3]))  # type: ignore[return-value]


def evaluate_files(pred_path: PathLike, ref_path: PathLike, convention: str | int = "2021") -> CaseMetrics:
    """Metrics of a prediction file against a reference file on the same grid (spacing from the files)."""
    pred_path, ref_path = Path(pred_path), Path(ref_path)
    diffs = geometry_differences(read_header(pred_path), read_header(ref_path))
    if diffs:
        raise BraTSInputError(f"{pred_path}: grid differs from {ref_path}: " + "; ".join(diffs))
    pred, ref = read_image(pred_path), read_image(ref_path)
    return evaluate_labels(
        sitk.GetArrayViewFromImage(pred), sitk.GetArrayViewFromImage(ref), spacing_zyx(ref), convention,
        pred_name=str(pred_path), ref_name=str(ref_path),
    )


# --- folders ----------------------------------------------------------------------------------


def case_id_of(path: PathLike) -> str:
    """Case id of a label file: `<case>_seg` / `<case>-seg` names give `<case>`, any other name its stem."""
    name = Path(path).name
    parsed = parse_filename(name)
    if parsed and parsed[1] == "seg":
        return parsed[0]
    return strip_extension(name)


def _digits(case_id: str) -> tuple[int, ...]:
    return tuple(int(d) for d in re.findall(r"\d+", case_id))


def match_cases(pred_files: Iterable[Path], ref_files: Iterable[Path]) -> tuple[list[tuple[str, Path, Path]], list[Path], list[Path]]:
    """Pair predictions with references by case id: (pairs as (case_id, pred, ref), unmatched preds, unmatched refs).

    Equal case ids match first. The rest match by their numbers (`SEG-00217-000` and
    `BraTS-MET-00217-000` share 217, 0); a prediction whose numbers are the trailing numbers of a
    reference id also matches (`00217-000`). A number key shared by several files matches nothing.
    The case id reported is the reference's.
    """
    preds = {p: case_id_of(p) for p in pred_files}
    refs = {r: case_id_of(r) for r in ref_files}
    pairs: list[tuple[str, Path, Path]] = []
    ref_by_id: dict[str, list[Path]] = {}
    for r, cid in refs.items():
        ref_by_id.setdefault(cid, []).append(r)
    pred_by_id: dict[str, list[Path]] = {}
    for p, cid in preds.items():
        pred_by_id.setdefault(cid, []).append(p)
    left_p, left_r = dict(preds), dict(refs)
    for cid, ps in pred_by_id.items():
        rs = ref_by_id.get(cid, [])
        if len(ps) == 1 and len(rs) == 1:
            pairs.append((cid, ps[0], rs[0]))
            del left_p[ps[0]], left_r[rs[0]]

    def candidates(p_digits: tuple[int, ...]) -> list[Path]:
        exact = [r for r, cid in left_r.items() if p_digits and _digits(cid) == p_digits]
        if exact:
            return exact
        return [r for r, cid in left_r.items() if p_digits and _digits(cid)[-len(p_digits):] == p_digits]

    proposals = {p: candidates(_digits(cid)) for p, cid in left_p.items()}
    claimed: dict[Path, list[Path]] = {}
    for p, rs in proposals.items():
        if len(rs) == 1:
            claimed.setdefault(rs[0], []).append(p)
    for r, ps in claimed.items():
        if len(ps) == 1:
            pairs.append((left_r.pop(r), ps[0], r))
            del left_p[ps[0]]
    pairs.sort(key=lambda t: t[0])
    return pairs, sorted(left_p), sorted(left_r)


def label_files(folder: PathLike) -> list[Path]:
    """Image files directly in `folder` (hidden and temporary files excluded), sorted by name."""
    d = Path(folder)
    if not d.is_dir():
        raise BraTSInputError(f"{d}: folder not found")
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".") and is_image_file(p))


def reference_files(folder: PathLike) -> list[Path]:
    """Label files of a reference folder: its images directly inside, else the `_seg`/`-seg` files of its case sub-folders."""
    files = label_files(folder)
    if files:
        return files
    found = []
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        found += [f for f in label_files(sub) if (parsed := parse_filename(f.name)) and parsed[1] == "seg"]
    return found


@dataclass
class CaseResult:
    """One evaluated case: its id, both files, its voxel spacing (z, y, x) and its metrics per region."""

    case_id: str
    pred: Path | None
    ref: Path
    metrics: CaseMetrics
    missing_prediction: bool = False


@dataclass
class EvaluationResults:
    """Results of a folder (or single pair) evaluation, and what could not be paired."""

    convention: str
    cases: list[CaseResult] = field(default_factory=list)
    unmatched_pred: list[Path] = field(default_factory=list)
    unmatched_ref: list[Path] = field(default_factory=list)


def evaluate_folders(
    pred_dir: PathLike, ref_dir: PathLike, convention: str | int = "2021", *,
    missing: str = "skip", progress: Callable[[Iterable], Iterable] | None = None,
) -> EvaluationResults:
    """Evaluate every prediction in `pred_dir` against its reference in `ref_dir`, matched by case id.

    `ref_dir` holds label files or BraTS case folders with `_seg` files. References without a
    prediction are listed in `unmatched_ref`; with `missing="empty"` they are also scored as an
    empty prediction (the challenge rule). `progress` wraps the case iterator (e.g. tqdm).
    """
    if missing not in ("skip", "empty"):
        raise ValueError(f"missing must be 'skip' or 'empty', got {missing!r}")
    conv = label_convention(convention).name
    preds, refs = label_files(pred_dir), reference_files(ref_dir)
    if not preds:
        raise BraTSInputError(f"{pred_dir}: no label images found")
    if not refs:
        raise BraTSInputError(f"{ref_dir}: no reference label images found")
    pairs, left_p, left_r = match_cases(preds, refs)
    if not pairs:
        raise BraTSInputError(f"{pred_dir}: no prediction matches a reference in {ref_dir} by case id")
    results = EvaluationResults(conv, unmatched_pred=left_p, unmatched_ref=left_r)
    jobs: list[tuple[str, Path | None, Path]] = list(pairs)
    if missing == "empty":
        jobs += [(case_id_of(r), None, r) for r in left_r]
    for cid, p, r in (progress(jobs) if progress else jobs):
        if p is None:
            ref = read_image(r)
            ref_arr = sitk.GetArrayViewFromImage(ref)
            m = evaluate_labels(np.zeros(ref_arr.shape, np.uint8), ref_arr, spacing_zyx(ref), conv, ref_name=str(r))
        else:
            m = evaluate_files(p, r, conv)
        results.cases.append(CaseResult(cid, p, r, m, missing_prediction=p is None))
    results.cases.sort(key=lambda c: c.case_id)
    return results


# --- summary ----------------------------------------------------------------------------------


def summarize(results: EvaluationResults | Iterable[CaseResult] | Iterable[Mapping[str, Mapping[str, float]]]
              ) -> dict[str, dict[str, dict[str, float]]]:
    """{region: {metric: {"mean", "median", "std", "n"}}} over cases; std is the sample std (ddof=1, NaN for n<2)."""
    cases = results.cases if isinstance(results, EvaluationResults) else list(results)
    per_case = [c.metrics if isinstance(c, CaseResult) else c for c in cases]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for region in REGIONS:
        names = [k for k in (per_case[0].get(region, {}) if per_case else {})]
        out[region] = {}
        for metric in names:
            v = np.array([float(c[region][metric]) for c in per_case], dtype=np.float64)
            out[region][metric] = {
                "mean": float(np.mean(v)),
                "median": float(np.median(v)),
                "std": float(np.std(v, ddof=1)) if v.size > 1 else float("nan"),
                "n": int(v.size),
            }
    return out
