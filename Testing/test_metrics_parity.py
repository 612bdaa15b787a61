"""Parity of our Dice and HD95 with the official BraTS package (PyPI `brats-evaluation`, via panoptica).

The official `global_bin_dsc` / `global_bin_hd95` come from `Panoptica_Evaluator` with the package's
bundled `config_gli.yaml` (2023 labels: WT = 1,2,3; TC = 1,3; ET = 3). Differences we check and
document rather than hide:
- its global HD95 ignores the voxel spacing (voxel units); ours is in mm, so on anisotropic files
  we compare our HD95 at unit spacing with it, and our mm HD95 with panoptica's own HD95 function
  called with the spacing;
- both masks empty: it returns NaN, the legacy rule (ours) says Dice 1, HD95 0;
- one mask empty, or both non-empty without overlap: its HD95 is inf (its CSV parser writes 373);
  ours is 373.13 for one empty and the true distance for disjoint masks.
Run with `-s` to see the measured deltas.
"""
from __future__ import annotations

import math
import warnings
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from BraTSMambaLib.data.conventions import REGIONS, convert_labels
from BraTSMambaLib.metrics import EMPTY_HD95_MM, evaluate_folders, evaluate_labels

pytestmark = pytest.mark.shared_data

panoptica = pytest.importorskip("panoptica")
pytest.importorskip("brats_evaluation")

from panoptica import Metric, Panoptica_Evaluator
from panoptica.metrics.hausdorff_distance import _compute_hausdorff_distance95
from panoptica.utils.segmentation_class import SegmentationClassGroups

DICE_TOL = 1e-4
HD95_TOL = 0.1
_GROUP = {"WT": "wt", "TC": "tc", "ET": "et"}

#: Real BraTS 2018 cases chosen for their structure: two large ET components (AME), two separate
#: tumour components (ALU), a small scattered ET (TCIA10_628).
PARITY_CASES = ("Brats18_CBICA_AME_1", "Brats18_CBICA_ALU_1", "Brats18_TCIA10_628_1")


@pytest.fixture(scope="module")
def official() -> Panoptica_Evaluator:
    """The package's bundled glioma evaluator, exactly as shipped."""
    cfg = files("brats_evaluation").joinpath("configs", "config_gli.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Panoptica_Evaluator.load_from_config(str(cfg))


@pytest.fixture(scope="module")
def official_regions(official) -> Panoptica_Evaluator:
    """The same evaluator limited to the wt/tc/et groups and the Dice instance metric, to halve the
    run time; the global-metric code path and the edge-case handler are the shipped ones."""
    settings = Panoptica_Evaluator._yaml_repr(official)
    groups = settings["segmentation_class_groups"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Panoptica_Evaluator(**{
            **settings,
            "segmentation_class_groups": SegmentationClassGroups({g: groups[g] for g in _GROUP.values()}),
            "instance_metrics": [Metric.DSC],
        })


def _official(evaluator, pred, ref) -> dict[str, tuple[float, float]]:
    """{region: (global_bin_dsc, global_bin_hd95)} from 2023-label arrays or file paths."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluator.evaluate(pred, ref)
    return {r: (float(res[g].global_bin_dsc), float(res[g].global_bin_hd95)) for r, g in _GROUP.items()}


def _compare(ours: dict, theirs: dict, pred_regions, ref_regions, tag: str, deltas: list) -> list[str]:
    """Check one case; return failures; append (|dDice|, |dHD95|) where both masks overlap."""
    bad = []
    for i, r in enumerate(REGIONS):
        p, q = pred_regions[i], ref_regions[i]
        od, oh = theirs[r]
        d, h = ours[r]["dice"], ours[r]["hd95"]
        if p.any() and q.any() and (p & q).any():
            deltas.append((abs(d - od), abs(h - oh), oh))
            if abs(d - od) > DICE_TOL or abs(h - oh) > HD95_TOL:
                bad.append(f"{tag} {r}: ours Dice {d:.6f} HD95 {h:.4f} vs official {od:.6f} {oh:.4f}")
        elif p.any() and q.any():  # disjoint: official falls back to its edge-case values
            if not (d == 0.0 and od == 0.0 and math.isinf(oh) and h > 0):
                bad.append(f"{tag} {r}: disjoint masks, ours {d} {h} vs official {od} {oh}")
        elif p.any() or q.any():
            if not (d == od == 0.0 and h == EMPTY_HD95_MM and math.isinf(oh)):
                bad.append(f"{tag} {r}: one empty, ours {d} {h} vs official {od} {oh}")
        else:
            if not (d == 1.0 and h == 0.0 and math.isnan(od) and math.isnan(oh)):
                bad.append(f"{tag} {r}: both empty, ours {d} {h} vs official {od} {oh}")
    return bad


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(0) - margin, 0), np.minimum(idx.max(0) + 1 + margin, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _report(name: str, deltas: list) -> None:
    dd, dh, h = np.array(deltas).T
    print(f"\n{name}: {len(deltas)} region comparisons (HD95 {h.min():.2f}..{h.max():.2f}), "
          f"max |dDice| = {dd.max():.2e}, max |dHD95| = {dh.max():.2e}")


# --- the official example pairs (BraTS-MET, 2023 labels, mixed and anisotropic spacing) ---------


def test_parity_on_official_example_pairs(shared_data: Path, official):
    root = shared_data / "brats-eval-pairs"
    res = evaluate_folders(root / "pred", root / "ref", "2023")
    assert len(res.cases) == 4 and not res.unmatched_pred and not res.unmatched_ref
    deltas, deltas_mm, bad, spacings = [], [], [], set()
    for case in res.cases:
        pred_img, ref_img = sitk.ReadImage(str(case.pred)), sitk.ReadImage(str(case.ref))
        spacing = tuple(reversed(ref_img.GetSpacing()))
        spacings.add(tuple(round(s, 4) for s in spacing))
        pred, ref = sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(ref_img)
        theirs = _official(official, pred.astype(np.uint8), ref.astype(np.uint8))
        unit = evaluate_labels(pred, ref, (1.0, 1.0, 1.0), "2023")
        pr = [np.isin(pred, lab) for lab in ((1, 2, 3), (1, 3), (3,))]
        rr = [np.isin(ref, lab) for lab in ((1, 2, 3), (1, 3), (3,))]
        bad += _compare(unit, theirs, pr, rr, case.case_id, deltas)
        for i, r in enumerate(REGIONS):
            assert case.metrics[r]["dice"] == unit[r]["dice"]
            if spacing != (1.0, 1.0, 1.0) and pr[i].any() and rr[i].any():
                box = _box(pr[i] | rr[i], margin=8)  # generous crop keeps the reference call affordable
                ref_mm = _compute_hausdorff_distance95(rr[i][box], pr[i][box], voxelspacing=spacing)
                deltas_mm.append((0.0, abs(case.metrics[r]["hd95"] - ref_mm), ref_mm))
                if abs(case.metrics[r]["hd95"] - ref_mm) > 1e-6:
                    bad.append(f"{case.case_id} {r}: HD95 {case.metrics[r]['hd95']} mm vs panoptica with spacing {ref_mm}")
    assert len(spacings) >= 2 and any(len(set(s)) > 1 for s in spacings), "expected mixed, anisotropic spacings"
    _report("example pairs (unit spacing vs global_bin_*)", deltas)
    _report("example pairs, anisotropic, mm vs panoptica HD95(voxelspacing)", deltas_mm)
    assert not bad, "\n".join(bad)


# --- real BraTS 2018 ground truths with realistic perturbations -------------------------------

_CROSS = ndimage.generate_binary_structure(3, 1)


def _shift(lab, rng):
    return np.roll(lab, (2, -3, 1), axis=(0, 1, 2))


def _erode(lab, rng):
    keep = ndimage.binary_erosion(lab > 0, _CROSS, iterations=2)
    return np.where(keep, lab, 0).astype(lab.dtype)


def _dilate(lab, rng):
    out = lab.copy()
    out[ndimage.binary_dilation(lab > 0, _CROSS, iterations=2) & (lab == 0)] = 2
    grow_et = ndimage.binary_dilation(lab == 4, _CROSS) & (lab == 1)
    out[grow_et] = 4
    return out


def _drop_components(lab, rng):
    """Miss the second-largest tumour component and the second-largest enhancing component."""
    out = lab.copy()
    for mask, fill in ((lab > 0, 0), (lab == 4, 1)):
        comp, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(comp.ravel())[1:]
            second = int(np.argsort(sizes)[-2]) + 1
            out[comp == second] = fill
    return out


def _noisy_with_false_positive(lab, rng):
    """Lose 30% of the tumour's surface voxels and add a false-positive blob 40 voxels away."""
    out = lab.copy()
    wt = lab > 0
    surf = wt & ~ndimage.binary_erosion(wt, _CROSS)
    out[surf & (rng.random(lab.shape) < 0.3)] = 0
    centre = np.round(ndimage.center_of_mass(wt)).astype(int)
    centre[2] = centre[2] + 40 if centre[2] < lab.shape[2] // 2 else centre[2] - 40
    zz, yy, xx = np.ogrid[: lab.shape[0], : lab.shape[1], : lab.shape[2]]
    blob = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= 16
    out[blob & (out == 0)] = 2
    return out


PERTURBATIONS = {
    "shift": _shift,
    "erode": _erode,
    "dilate": _dilate,
    "drop_components": _drop_components,
    "noise_fp": _noisy_with_false_positive,
}


def _seg(shared_data: Path, case: str) -> tuple[np.ndarray, tuple[float, ...]]:
    img = sitk.ReadImage(str(shared_data / "brats2018" / case / f"{case}_seg.nii.gz"))
    return sitk.GetArrayFromImage(img).astype(np.uint8), tuple(reversed(img.GetSpacing()))


def test_parity_on_perturbed_brats2018(shared_data: Path, official_regions):
    deltas, bad = [], []
    rng = np.random.default_rng(2018)
    for case in PARITY_CASES:
        ref, spacing = _seg(shared_data, case)
        assert spacing == (1.0, 1.0, 1.0)  # so the official voxel-unit HD95 is in mm too
        ref23 = convert_labels(ref, "2021", "2023")
        for name, perturb in PERTURBATIONS.items():
            pred = perturb(ref, rng)
            ours = evaluate_labels(pred, ref, spacing, "2021")
            theirs = _official(official_regions, convert_labels(pred, "2021", "2023"), ref23)
            pr = [np.isin(pred, lab) for lab in ((1, 2, 4), (1, 4), (4,))]
            rr = [np.isin(ref, lab) for lab in ((1, 2, 4), (1, 4), (4,))]
            bad += _compare(ours, theirs, pr, rr, f"{case}/{name}", deltas)
    _report("BraTS 2018 perturbed (global_bin_*)", deltas)
    assert len(deltas) == len(PARITY_CASES) * len(PERTURBATIONS) * len(REGIONS)
    assert not bad, "\n".join(bad)


def test_empty_mask_conventions_differ_from_official(shared_data: Path, official_regions):
    """ET absent from the prediction: both score Dice 0, official HD95 inf, ours 373.13.
    ET absent from both: official NaN, ours Dice 1 and HD95 0 (legacy BraTS rule)."""
    ref, spacing = _seg(shared_data, PARITY_CASES[0])
    no_et = np.where(ref == 4, 1, ref).astype(np.uint8)
    ours = evaluate_labels(no_et, ref, spacing, "2021")["ET"]
    theirs = _official(official_regions, convert_labels(no_et, "2021", "2023"), convert_labels(ref, "2021", "2023"))["ET"]
    assert (ours["dice"], ours["hd95"]) == (0.0, EMPTY_HD95_MM)
    assert theirs[0] == 0.0 and math.isinf(theirs[1])

    ours = evaluate_labels(no_et, no_et, spacing, "2021")["ET"]
    theirs = _official(official_regions, convert_labels(no_et, "2021", "2023"), convert_labels(no_et, "2021", "2023"))["ET"]
    assert (ours["dice"], ours["hd95"]) == (1.0, 0.0)
    assert math.isnan(theirs[0]) and math.isnan(theirs[1])
