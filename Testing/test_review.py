"""The annotation-review tab's Qt-free parts with a real MRML scene (slicer-core): listing cases and their
predictions, loading a case (geometry against Slicer's own reader, oblique grids included, and a real
BraTS 2018 case), the ground truth and prediction as WT/TC/ET segmentations, the prediction's Dice against
`metrics.evaluate_files`, verdicts written atomically and resumed, corrected label maps in the case's naming."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SHAPE = (40, 40, 28)


def _scene():
    from BraTSMambaLib import mrml

    return mrml.new_scene()


def _phantom(folder: Path, seed: int) -> Path:
    from BraTSMambaLib.data.phantom import phantom_case_id, write_phantom

    return write_phantom(folder / phantom_case_id(seed), seed=seed, shape_xyz=SHAPE)


def _shifted_prediction(seg_path: Path, out: Path) -> Path:
    """A prediction that differs from the ground truth: the label map moved by one voxel along x."""
    seg = sitk.ReadImage(str(seg_path))
    arr = np.roll(sitk.GetArrayFromImage(seg), 1, axis=2)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(seg)
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(out))
    return out


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    """Three phantom cases; predictions for s2 (label map) and s3 (.seg.nrrd and label map)."""
    from BraTSMambaLib.data.phantom import phantom_case_id
    from BraTSMambaLib.mrml.review import list_review_cases, load_review_case
    from BraTSMambaLib.mrml.scene import save_node

    root = tmp_path_factory.mktemp("review")
    for seed in (1, 2, 3):
        _phantom(root / "cases", seed)
    for seed in (2, 3):
        cid = phantom_case_id(seed)
        _shifted_prediction(root / "cases" / cid / f"{cid}_seg.nii.gz", root / "preds" / f"{cid}_seg.nii.gz")
    cid3 = phantom_case_id(3)
    scene = _scene()
    case3 = next(c for c in list_review_cases(root / "cases") if c.case_id == cid3)
    loaded = load_review_case(scene, case3)  # its ground truth as the .seg.nrrd "prediction"
    save_node(loaded.ground_truth, root / "preds" / f"{cid3}.seg.nrrd")
    return root


def test_cases_are_listed_with_their_predictions(cases, tmp_path):
    from BraTSMambaLib.data.phantom import phantom_case_id
    from BraTSMambaLib.errors import BraTSInputError
    from BraTSMambaLib.mrml.review import list_review_cases

    listed = list_review_cases(cases / "cases", cases / "preds")
    ids = [phantom_case_id(s) for s in (1, 2, 3)]
    assert [c.case_id for c in listed] == ids
    assert all(c.has_ground_truth and c.naming == "brats2021" for c in listed)
    assert [c.prediction.name if c.prediction else None for c in listed] == [
        None, f"{ids[1]}_seg.nii.gz", f"{ids[2]}.seg.nrrd"]  # .seg.nrrd preferred over the label map
    assert all(c.prediction is None for c in list_review_cases(cases / "cases"))
    with pytest.raises(BraTSInputError, match="no BraTS case"):
        list_review_cases(tmp_path)
    broken = tmp_path / "broken" / "X"
    broken.mkdir(parents=True)
    shutil.copy(cases / "cases" / ids[0] / f"{ids[0]}_t1.nii.gz", broken / "X_t1.nii.gz")
    with pytest.raises(BraTSInputError, match="missing T1ce"):
        list_review_cases(tmp_path / "broken")


def test_loaded_case_has_slicers_geometry_on_an_oblique_grid(tmp_path):
    """Volumes and segmentations of a case on an oblique, anisotropic grid sit where Slicer's reader puts them."""
    from BraTSMambaLib.data import conventions as C
    from BraTSMambaLib.mrml import load_volume
    from BraTSMambaLib.mrml.geometry import ijk_to_world
    from BraTSMambaLib.mrml.review import list_review_cases, load_review_case
    from BraTSMambaLib.mrml.segmentation import segment_masks

    folder = _phantom(tmp_path / "cases", 5)
    c, s = np.cos(0.3), np.sin(0.3)
    for f in folder.iterdir():  # the same oblique grid for all five files
        img = sitk.ReadImage(str(f))
        img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
        img.SetSpacing((1.0, 1.2, 2.5))
        img.SetOrigin((10.0, -20.0, 5.0))
        sitk.WriteImage(img, str(f))
    scene = _scene()
    [case] = list_review_cases(tmp_path / "cases")
    loaded = load_review_case(scene, case)
    for m in C.MODALITIES:
        path = next(folder.glob(f"*_{m}.nii.gz"))
        reference = load_volume(scene, path)
        assert np.allclose(ijk_to_world(loaded.volumes[m]), ijk_to_world(reference), atol=1e-4), m
        assert np.array_equal(_array(loaded.volumes[m]), _array(reference)), m
        assert loaded.volumes[m].GetName() == path.name[:-7]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(next(folder.glob("*_seg.nii.gz")))))
    masks = segment_masks(loaded.ground_truth, loaded.reference)
    for i, r in enumerate(C.REGIONS):
        assert np.array_equal(masks[r], C.labels_to_regions(seg, "2021")[i]), r
    gt = loaded.ground_truth.GetSegmentation()
    assert [gt.GetNthSegment(i).GetName() for i in range(gt.GetNumberOfSegments())] == list(C.REGIONS)
    assert not loaded.ground_truth.GetDisplayNode().GetVisibility2DFill()  # outlines: the prediction is filled
    assert loaded.prediction is None and loaded.metrics is None


def _array(node) -> np.ndarray:
    import slicer.util

    return slicer.util.arrayFromVolume(node)


def test_prediction_scores_equal_the_metrics_on_the_files(cases):
    from BraTSMambaLib.data import conventions as C
    from BraTSMambaLib.metrics import evaluate_files
    from BraTSMambaLib.mrml.review import list_review_cases, load_review_case
    from BraTSMambaLib.mrml.segmentation import segment_masks

    scene = _scene()
    c2, c3 = list_review_cases(cases / "cases", cases / "preds")[1:]
    loaded = load_review_case(scene, c2)
    expected = evaluate_files(c2.prediction, next(c2.folder.glob("*_seg.nii.gz")), "2021")
    for r in C.REGIONS:
        assert loaded.metrics[r]["dice"] == pytest.approx(expected[r]["dice"], abs=1e-12), r
        assert loaded.metrics[r]["hd95"] == pytest.approx(expected[r]["hd95"], abs=1e-9), r
    assert 0.3 < loaded.dice["WT"] < 1.0  # shifted by one voxel: overlapping, not equal
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(c2.prediction)))
    masks = segment_masks(loaded.prediction, loaded.reference)
    assert all(np.array_equal(masks[r], C.labels_to_regions(pred, "2021")[i]) for i, r in enumerate(C.REGIONS))
    loaded3 = load_review_case(scene, c3)  # .seg.nrrd prediction = its ground truth
    assert loaded3.dice == {"WT": 1.0, "TC": 1.0, "ET": 1.0}


def test_a_prediction_on_another_grid_is_refused_and_nothing_stays(cases, tmp_path):
    from BraTSMambaLib.errors import BraTSInputError
    from BraTSMambaLib.mrml.review import list_review_cases, load_review_case

    c2 = list_review_cases(cases / "cases", cases / "preds")[1]
    bad = sitk.ReadImage(str(c2.prediction))
    bad.SetOrigin((3.0, 0.0, 0.0))
    c2.prediction = tmp_path / c2.prediction.name
    sitk.WriteImage(bad, str(c2.prediction))
    scene = _scene()
    before = scene.GetNumberOfNodes()
    with pytest.raises(BraTSInputError, match="grid does not match"):
        load_review_case(scene, c2)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert scene.GetNumberOfNodes() <= before + 8  # at most leftover storage/display helpers, no data nodes


def test_a_broken_folder_is_skipped_and_a_case_that_fails_to_load_can_be_rejected(cases, tmp_path):
    from BraTSMambaLib.data.phantom import phantom_case_id
    from BraTSMambaLib.errors import BraTSInputError
    from BraTSMambaLib.mrml.review import ReviewSession

    root = tmp_path / "cases"
    shutil.copytree(cases / "cases", root)
    cid = phantom_case_id(1)
    (root / cid / f"{cid}_flair.nii.gz").unlink()  # case 1 lacks its FLAIR: skipped, named
    preds = tmp_path / "preds"
    preds.mkdir()
    cid2 = phantom_case_id(2)
    bad = sitk.ReadImage(str(root / cid2 / f"{cid2}_seg.nii.gz"))
    bad.SetSpacing((2.0, 2.0, 2.0))  # a prediction on another grid
    sitk.WriteImage(bad, str(preds / f"{cid2}.nii.gz"))
    session = ReviewSession.open(root, tmp_path / "review.csv", preds)
    assert [c.case_id for c in session.cases] == [cid2, phantom_case_id(3)]
    assert len(session.skipped) == 1 and "missing FLAIR" in session.skipped[0] and "skipped" in session.progress_text()
    scene = _scene()
    session.show(scene, 1)
    with pytest.raises(BraTSInputError, match="grid does not match"):
        session.show(scene, 0)
    assert session.index == 0 and session.loaded is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0  # case 3's nodes went with it
    row = session.record("reject", "prediction on the wrong grid")
    assert (row["case"], row["dice_WT"]) == (cid2, "")


def test_verdicts_are_written_atomically_and_the_review_resumes(cases, tmp_path):
    from BraTSMambaLib.data.review_log import FIELDS, ReviewLog
    from BraTSMambaLib.errors import BraTSInputError
    from BraTSMambaLib.mrml.review import ReviewSession

    review = tmp_path / "sub" / "review.csv"
    scene = _scene()
    session = ReviewSession.open(cases / "cases", review, cases / "preds", reviewer="AB")
    assert session.index == 0 and not review.exists()
    session.show(scene)
    session.record("accept", "clean\nboundary")
    nodes_case1 = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    loaded = session.step(scene, 1)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == nodes_case1 == 4  # previous case removed
    inode = review.stat().st_ino
    row = session.record("needs correction", "ET too small")
    assert review.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert row["dice_WT"] == f"{loaded.dice['WT']:.4f}" and row["reviewer"] == "AB"
    assert [p.name for p in review.parent.iterdir()] == ["review.csv"]  # no temporary left behind
    with open(review, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(FIELDS)
    assert [(r["case"], r["verdict"], r["note"]) for r in rows] == [
        (session.cases[0].case_id, "accept", "clean boundary"),
        (session.cases[1].case_id, "needs correction", "ET too small")]
    assert rows[0]["dice_WT"] == ""  # case 1 has no prediction
    with pytest.raises(BraTSInputError, match="not one of"):
        session.record("maybe")
    assert len(ReviewLog.open(review).entries) == 2
    resumed = ReviewSession.open(cases / "cases", review, cases / "preds")
    assert resumed.index == 2 and "reviewed 2" in resumed.progress_text()
    resumed.show(scene)
    resumed.record("reject")
    assert ReviewSession.open(cases / "cases", review).index == 2  # all reviewed: stays on the last
    review.write_text("case,verdict\nX,fine\n")
    with pytest.raises(BraTSInputError, match="review.csv: row 2"):
        ReviewLog.open(review)


def test_corrected_segmentation_is_saved_in_the_cases_naming_and_labels(cases, tmp_path):
    from BraTSMambaLib.data import conventions as C
    from BraTSMambaLib.data.io import geometry_differences
    from BraTSMambaLib.data.phantom import phantom_case_id
    from BraTSMambaLib.mrml.review import list_review_cases, load_review_case, save_corrected_labelmap
    from BraTSMambaLib.mrml.segmentation import segmentation_from_prediction

    # a BraTS 2023 case: 2023 file names and labels {1, 2, 3}
    cid = phantom_case_id(2)
    src = cases / "cases" / cid
    dst = tmp_path / "cases23" / "GLI-9"
    dst.mkdir(parents=True)
    for key, suffix in C.NAMINGS["brats2023"].suffixes.items():
        img = sitk.ReadImage(str(src / C.NAMINGS["brats2021"].filename(cid, key)))
        if key == "seg":
            labels23 = sitk.GetImageFromArray(C.convert_labels(sitk.GetArrayFromImage(img), "2021", "2023"))
            labels23.CopyInformation(img)
            img = labels23
        sitk.WriteImage(img, str(dst / C.NAMINGS["brats2023"].filename("GLI-9", key)))
    scene = _scene()
    [case] = list_review_cases(tmp_path / "cases23")
    assert case.naming == "brats2023"
    loaded = load_review_case(scene, case)
    assert loaded.labels == "2023"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(dst / "GLI-9-seg.nii.gz")))
    edited = {r: m.copy() for r, m in zip(C.REGIONS, C.labels_to_regions(truth, "2023"))}
    edited["ET"][:] = False  # the reviewer erased the enhancing tumour
    seg = segmentation_from_prediction(scene, edited, loaded.reference, "edited", show3d=False)
    out = save_corrected_labelmap(seg, loaded, tmp_path / "corrected")
    assert out == tmp_path / "corrected" / "GLI-9-seg.nii.gz"
    written = sitk.ReadImage(str(out))
    assert geometry_differences(written, sitk.ReadImage(str(dst / "GLI-9-t1c.nii.gz"))) == []
    expected = C.regions_to_labels(np.stack([edited[r] for r in C.REGIONS]), "2023")
    assert np.array_equal(sitk.GetArrayFromImage(written), expected)
    assert 3 not in np.unique(expected) and {1, 2} <= set(np.unique(expected))
    with pytest.raises(Exception, match="already exists"):
        save_corrected_labelmap(seg, loaded, tmp_path / "corrected")
    assert os.listdir(tmp_path / "corrected") == ["GLI-9-seg.nii.gz"]


@pytest.mark.shared_data
def test_real_brats2018_case_with_a_prediction(shared_data, tmp_path):
    """A real 240x240x155 case: Slicer's geometry, ground truth voxels, and Dice of a shifted prediction."""
    from BraTSMambaLib.data import conventions as C
    from BraTSMambaLib.metrics import evaluate_files
    from BraTSMambaLib.mrml import load_volume
    from BraTSMambaLib.mrml.geometry import ijk_to_world
    from BraTSMambaLib.mrml.review import ReviewSession

    cases = shared_data / "brats2018"
    src = cases / "Brats18_2013_11_1"  # the first case: where a new review starts
    seg_path = src / "Brats18_2013_11_1_seg.nii.gz"
    pred = _shifted_prediction(seg_path, tmp_path / "preds" / "Brats18_2013_11_1.nii.gz")
    scene = _scene()
    session = ReviewSession.open(cases, tmp_path / "review.csv", tmp_path / "preds")
    assert len(session.cases) == 14 and session.current.case_id == src.name
    assert [c.prediction is not None for c in session.cases].count(True) == 1
    loaded = session.show(scene)
    reference = load_volume(scene, src / "Brats18_2013_11_1_t1ce.nii.gz")
    assert np.allclose(ijk_to_world(loaded.reference), ijk_to_world(reference), atol=1e-4)
    assert np.array_equal(_array(loaded.reference), _array(reference))
    expected = evaluate_files(pred, seg_path, "2021")
    for r in C.REGIONS:
        assert loaded.dice[r] == pytest.approx(expected[r]["dice"], abs=1e-12), r
    assert session.record("accept")["dice_ET"] == f"{expected['ET']['dice']:.4f}"
