"""Metric definitions and edge cases, checked against hand computations and a brute-force reference."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial import cKDTree

from BraTSMambaLib.data.conventions import LABEL_CONVENTIONS, REGIONS
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.metrics import (
    EMPTY_HD95_MM,
    METRICS,
    case_id_of,
    evaluate_files,
    evaluate_folders,
    evaluate_labels,
    hd95,
    match_cases,
    region_metrics,
    summarize,
    surface,
)
from BraTSMambaLib.metrics.binary import bounding_box
from BraTSMambaLib.metrics.evaluate import reference_files


def _zeros(shape=(12, 14, 16)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def test_empty_constant_is_the_brats_volume_diagonal():
    assert EMPTY_HD95_MM == 373.13
    assert abs(EMPTY_HD95_MM - math.sqrt(240**2 + 240**2 + 155**2)) < 0.005


def test_both_empty_scores_one_and_zero():
    m = region_metrics(_zeros(), _zeros(), (1.0, 1.0, 1.0))
    assert m == {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0,
                 "pred_volume_ml": 0.0, "ref_volume_ml": 0.0}


@pytest.mark.parametrize("empty", ["pred", "ref"])
def test_exactly_one_empty_scores_zero_and_diagonal(empty):
    full = _zeros()
    full[3:6, 4:8, 5:9] = True  # 3*4*4 = 48 voxels
    pred, ref = (_zeros(), full) if empty == "pred" else (full, _zeros())
    m = region_metrics(pred, ref, (2.0, 1.0, 0.5))
    assert m["dice"] == 0.0
    assert m["hd95"] == EMPTY_HD95_MM
    assert m["sensitivity"] == (0.0 if empty == "pred" else 1.0)
    assert m["specificity"] == (1.0 if empty == "pred" else 1.0 - 48 / (full.size))
    assert m["pred_volume_ml"] == pytest.approx(0.0 if empty == "pred" else 48 * 1.0 / 1000)
    assert m["ref_volume_ml"] == pytest.approx(48 * 1.0 / 1000 if empty == "pred" else 0.0)


def test_identical_masks():
    rng = np.random.default_rng(0)
    a = rng.random((20, 22, 24)) > 0.7
    m = region_metrics(a, a.copy(), (1.0, 1.0, 1.0))
    assert m["dice"] == 1.0 and m["hd95"] == 0.0 and m["sensitivity"] == 1.0 and m["specificity"] == 1.0


def test_single_voxels_apart_along_each_axis_use_that_axis_spacing():
    spacing = (3.0, 0.7, 0.5)  # z, y, x
    for axis in range(3):
        pred, ref = _zeros(), _zeros()
        ref[5, 5, 5] = True
        idx = [5, 5, 5]
        idx[axis] += 4
        pred[tuple(idx)] = True
        m = region_metrics(pred, ref, spacing)
        assert m["dice"] == 0.0
        assert m["hd95"] == pytest.approx(4 * spacing[axis])
        assert m["sensitivity"] == 0.0


def test_single_voxel_identical():
    a = _zeros()
    a[0, 0, 0] = True  # on the array corner: still its own surface
    m = region_metrics(a, a.copy(), (1.0, 1.0, 1.0))
    assert m["dice"] == 1.0 and m["hd95"] == 0.0


def test_hd95_pools_both_directions_before_the_percentile():
    """ref = one voxel; pred = that voxel + one 4 voxels away along x (0.5 mm): distances pooled
    are [0, 2] (pred->ref) and [0] (ref->pred); the linear 95th percentile of [0, 0, 2] is 0.9 * 2.
    (The max of the two directed percentiles would give 0.95 * 2.)"""
    ref, pred = _zeros(), _zeros()
    ref[6, 6, 2] = True
    pred[6, 6, 2] = pred[6, 6, 6] = True
    m = region_metrics(pred, ref, (3.0, 0.7, 0.5))
    assert m["hd95"] == pytest.approx(1.8)
    assert m["dice"] == pytest.approx(2 / 3)
    assert m["sensitivity"] == 1.0
    assert m["specificity"] == pytest.approx(1 - 1 / (ref.size - 1))
    assert m["pred_volume_ml"] == pytest.approx(2 * 3.0 * 0.7 * 0.5 / 1000)


def test_anisotropic_parallel_planes():
    """Two one-voxel-thick planes normal to z, 2 slices apart at 2.5 mm: every surface distance is 5 mm."""
    ref, pred = _zeros(), _zeros()
    ref[3] = True
    pred[5] = True
    assert hd95(pred, ref, (2.5, 0.8, 0.8)) == pytest.approx(5.0)
    # planes normal to x, 3 columns apart at 0.8 mm
    ref, pred = _zeros(), _zeros()
    ref[:, :, 2] = True
    pred[:, :, 5] = True
    assert hd95(pred, ref, (2.5, 0.8, 0.8)) == pytest.approx(2.4)


def test_surface_is_mask_minus_6_connected_erosion():
    a = _zeros()
    a[2:7, 2:7, 2:7] = True
    s = surface(a)
    assert s.sum() == 5**3 - 3**3
    b = np.ones((4, 4, 4), bool)  # touches every array face: all outer voxels are surface
    assert surface(b).sum() == 4**3 - 2**3


def _brute_hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """Uncropped reference: surfaces from a padded array, nearest neighbours by k-d tree in mm."""
    sp = np.asarray(spacing)
    ps = np.argwhere(surface(pred)) * sp
    rs = np.argwhere(surface(ref)) * sp
    d1, _ = cKDTree(rs).query(ps)
    d2, _ = cKDTree(ps).query(rs)
    return float(np.percentile(np.concatenate((d1, d2)), 95))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cropped_hd95_equals_brute_force(seed):
    """Random blobs, some touching the array edge, in a larger volume; anisotropic spacing."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (30, 40, 36)
    noise = ndimage.gaussian_filter(rng.random(shape), 2.0)
    ref = noise > np.quantile(noise, 0.93)
    pred = np.roll(ref, rng.integers(-3, 4, 3), axis=(0, 1, 2))
    pred = ndimage.binary_dilation(pred) if seed % 2 else ndimage.binary_erosion(pred)
    ref[0, 5:15, 5:15] = True  # edge voxels count as surface
    spacing = (1.5, 0.9, 0.6)
    assert hd95(pred, ref, spacing) == pytest.approx(_brute_hd95(pred, ref, spacing), abs=1e-9)


def test_bounding_box_margin_and_clipping():
    a = _zeros((10, 10, 10))
    a[0, 4, 9] = True
    assert bounding_box(a, margin=1) == (slice(0, 2), slice(3, 6), slice(8, 10))


def test_region_metrics_rejects_bad_input():
    with pytest.raises(ValueError):
        region_metrics(_zeros((4, 4, 4)), _zeros((4, 4, 5)), (1, 1, 1))
    with pytest.raises(ValueError):
        region_metrics(_zeros(), _zeros(), (1, 0, 1))


# --- label maps -------------------------------------------------------------------------------


def _label_pair(convention: str) -> tuple[np.ndarray, np.ndarray]:
    v = LABEL_CONVENTIONS[convention].values
    ref = np.zeros((10, 12, 14), np.uint8)
    ref[2:8, 2:10, 2:12] = v["edema"]
    ref[3:7, 4:8, 4:10] = v["necrosis"]
    ref[4:6, 5:7, 5:8] = v["enhancing"]
    pred = ref.copy()
    pred[pred == v["necrosis"]] = v["edema"]  # core missed entirely, WT intact
    return pred, ref


@pytest.mark.parametrize("convention", ["2021", "2023"])
def test_evaluate_labels_regions(convention):
    pred, ref = _label_pair(convention)
    m = evaluate_labels(pred, ref, (1.0, 1.0, 1.0), convention)
    assert list(m) == list(REGIONS)
    assert m["WT"]["dice"] == 1.0 and m["WT"]["hd95"] == 0.0
    et_vox, tc_vox = 2 * 2 * 3, 4 * 4 * 6
    assert m["ET"]["dice"] == 1.0
    assert m["TC"]["dice"] == pytest.approx(2 * et_vox / (et_vox + tc_vox))
    assert m["TC"]["sensitivity"] == pytest.approx(et_vox / tc_vox)
    assert m["TC"]["ref_volume_ml"] == pytest.approx(tc_vox / 1000)
    assert set(m["TC"]) == set(METRICS)


def test_evaluate_labels_refuses_values_outside_the_convention():
    pred, ref = _label_pair("2023")
    with pytest.raises(BraTSInputError, match=r"^my_pred\.nii\.gz: label values \[3\]"):
        evaluate_labels(pred, ref, (1, 1, 1), "2021", pred_name="my_pred.nii.gz")


# --- files and folders ------------------------------------------------------------------------


def _write(path: Path, labels: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    img = sitk.GetImageFromArray(labels.astype(np.uint8))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))
    return path


def test_evaluate_files_uses_file_spacing(tmp_path):
    pred, ref = _label_pair("2021")
    pred = np.roll(pred, 2, axis=0)  # shift along z
    spacing_xyz = (0.5, 0.7, 3.0)
    p = _write(tmp_path / "p.nii.gz", pred, spacing_xyz)
    r = _write(tmp_path / "r_seg.nii.gz", ref, spacing_xyz)
    m = evaluate_files(p, r, "2021")
    expected = evaluate_labels(pred, ref, (3.0, 0.7, 0.5), "2021")  # NIfTI stores spacing as float32
    assert {r: pytest.approx(v, rel=1e-6) for r, v in expected.items()} == m
    assert m["ET"]["hd95"] == pytest.approx(6.0)  # 2 slices of 3 mm


def test_evaluate_files_geometry_mismatch_names_both_files(tmp_path):
    pred, ref = _label_pair("2021")
    p = _write(tmp_path / "p.nii.gz", pred, (1.0, 1.0, 1.0))
    r = _write(tmp_path / "r.nii.gz", ref, (1.0, 1.0, 2.0))
    with pytest.raises(BraTSInputError, match=r"p\.nii\.gz.*r\.nii\.gz.*spacing"):
        evaluate_files(p, r)
    r2 = _write(tmp_path / "r2.nii.gz", ref[:, :, :-1])
    with pytest.raises(BraTSInputError, match=r"p\.nii\.gz.*r2\.nii\.gz.*size"):
        evaluate_files(p, r2)


def test_evaluate_files_missing_file(tmp_path):
    _, ref = _label_pair("2021")
    r = _write(tmp_path / "r.nii.gz", ref)
    with pytest.raises(BraTSInputError, match="nope.nii.gz"):
        evaluate_files(tmp_path / "nope.nii.gz", r)


def test_case_ids_and_matching_of_the_brats_met_names():
    preds = [Path(n) for n in ("00132-000.nii.gz", "BraTS-MET-00630-001.nii.gz", "BraTS-MET_01325-000.nii.gz",
                               "SEG-00217-000.nii.gz", "other-99999-000.nii.gz")]
    refs = [Path(n) for n in ("BraTS-MET-00132-000-seg.nii.gz", "BraTS-MET-00217-000-seg.nii.gz",
                              "BraTS-MET-00630-001-seg.nii.gz", "BraTS-MET-01325-000-seg.nii.gz",
                              "BraTS-MET-00777-000-seg.nii.gz")]
    assert case_id_of(refs[0]) == "BraTS-MET-00132-000"
    assert case_id_of(Path("Brats18_2013_11_1_seg.nii.gz")) == "Brats18_2013_11_1"
    assert case_id_of(preds[0]) == "00132-000"
    pairs, left_p, left_r = match_cases(preds, refs)
    assert [(c, p.name) for c, p, _ in pairs] == [
        ("BraTS-MET-00132-000", "00132-000.nii.gz"),
        ("BraTS-MET-00217-000", "SEG-00217-000.nii.gz"),
        ("BraTS-MET-00630-001", "BraTS-MET-00630-001.nii.gz"),
        ("BraTS-MET-01325-000", "BraTS-MET_01325-000.nii.gz"),
    ]
    assert left_p == [Path("other-99999-000.nii.gz")] and left_r == [Path("BraTS-MET-00777-000-seg.nii.gz")]


def test_matching_exact_ids_first_and_ambiguous_numbers_match_nothing():
    preds = [Path("BraTS2021_00001.nii.gz"), Path("a-00005.nii.gz"), Path("b-00005.nii.gz")]
    refs = [Path("BraTS2021_00001_seg.nii.gz"), Path("BraTS2021_00005_seg.nii.gz")]
    pairs, left_p, left_r = match_cases(preds, refs)
    assert [(c, p.name) for c, p, _ in pairs] == [("BraTS2021_00001", "BraTS2021_00001.nii.gz")]
    assert left_p == preds[1:] and left_r == [refs[1]]


def test_evaluate_folders_with_case_folders_and_missing_predictions(tmp_path):
    pred, ref = _label_pair("2021")
    (tmp_path / "pred").mkdir()
    for cid in ("caseA", "caseB"):
        (tmp_path / "gt" / cid).mkdir(parents=True)
        _write(tmp_path / "gt" / cid / f"{cid}_seg.nii.gz", ref)
        _write(tmp_path / "gt" / cid / f"{cid}_t1.nii.gz", ref)  # not a label file: ignored
    _write(tmp_path / "pred" / "caseA.nii.gz", pred)
    assert [p.name for p in reference_files(tmp_path / "gt")] == ["caseA_seg.nii.gz", "caseB_seg.nii.gz"]
    res = evaluate_folders(tmp_path / "pred", tmp_path / "gt", "2021")
    assert [c.case_id for c in res.cases] == ["caseA"]
    assert [p.name for p in res.unmatched_ref] == ["caseB_seg.nii.gz"]
    res = evaluate_folders(tmp_path / "pred", tmp_path / "gt", "2021", missing="empty")
    assert [c.case_id for c in res.cases] == ["caseA", "caseB"]
    b = res.cases[1]
    assert b.missing_prediction and b.pred is None
    assert b.metrics["WT"]["dice"] == 0.0 and b.metrics["WT"]["hd95"] == EMPTY_HD95_MM


def test_evaluate_folders_without_any_match(tmp_path):
    pred, ref = _label_pair("2021")
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    _write(tmp_path / "p" / "x.nii.gz", pred)
    _write(tmp_path / "g" / "y_seg.nii.gz", ref)
    with pytest.raises(BraTSInputError, match="no prediction matches"):
        evaluate_folders(tmp_path / "p", tmp_path / "g")


def test_summarize_mean_median_sample_std():
    cases = [{r: {"dice": d, "hd95": h} for r in REGIONS} for d, h in ((0.5, 1.0), (0.7, 2.0), (0.9, 9.0))]
    s = summarize(cases)
    assert s["TC"]["dice"]["mean"] == pytest.approx(0.7)
    assert s["TC"]["dice"]["median"] == pytest.approx(0.7)
    assert s["TC"]["dice"]["std"] == pytest.approx(0.2)  # sample std (ddof=1)
    assert s["ET"]["hd95"]["mean"] == pytest.approx(4.0) and s["ET"]["hd95"]["median"] == 2.0
    assert s["WT"]["hd95"]["n"] == 3
    assert math.isnan(summarize(cases[:1])["WT"]["dice"]["std"])
