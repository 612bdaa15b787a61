"""The bundled demo model with its trained weights, on real BraTS 2018 cases it was not trained on.

These are the only accuracy claims in the suite: the held-out cases come from the model's own
split file (Resources/Models/demo/training/splits_final.json), and the thresholds sit below the
Dice the model card reports for them (WT 0.855-0.939, TC 0.715-0.889, ET 0.781-0.845).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from BraTSMambaLib.data import conventions as cv
from BraTSMambaLib.data.case import load_case
from BraTSMambaLib.data.io import write_image
from BraTSMambaLib.inference.catalogue import demo_package_path
from BraTSMambaLib.metrics import evaluate_labels

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

DEMO = demo_package_path()
if DEMO is None:
    pytest.skip("no demo package bundled", allow_module_level=True)


@pytest.fixture(scope="module")
def held_out_case(shared_data):
    split = json.loads((DEMO / "training" / "splits_final.json").read_text())[0]
    return shared_data / "brats2018" / split["val"][0]


@pytest.fixture(scope="module")
def demo_model():
    from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model

    return load_model(None, SegmentOptions(device="cpu", fast=True))


def test_segments_held_out_real_case(held_out_case, demo_model, tmp_path):
    from BraTSMambaLib.inference.pipeline import SegmentOptions, segment_case

    res = segment_case(held_out_case, demo_model, tmp_path, SegmentOptions(device="cpu", fast=True, evaluate=True))
    ref = load_case(held_out_case).reference
    out = sitk.ReadImage(str(res.paths["seg"]))
    assert out.GetSize() == ref.GetSize() and out.GetOrigin() == ref.GetOrigin()
    assert out.GetDirection() == ref.GetDirection() and out.GetSpacing() == ref.GetSpacing()
    dice = {r: res.report["evaluation"][r]["dice"] for r in cv.REGIONS}
    assert dice["WT"] > 0.75 and dice["TC"] > 0.5 and dice["ET"] > 0.5, dice


def _crop_around_tumour(case_dir, out_dir, size_xyz=(112, 112, 80)) -> dict:
    """Files of a real case cropped to a box around its tumour: one 128^3 tile, a few seconds on a CPU."""
    case = load_case(case_dir, require_seg=True)
    seg = sitk.GetArrayFromImage(case.seg)
    centre_zyx = np.argwhere(seg > 0).mean(axis=0).round().astype(int)
    size = np.array(size_xyz)
    full = np.array(case.reference.GetSize())
    start = np.clip(centre_zyx[::-1] - size // 2, 0, full - size)
    naming = cv.NAMINGS["brats2021"]
    files = {}
    for key, image in {**case.images, "seg": case.seg}.items():
        roi = sitk.RegionOfInterest(image, [int(s) for s in size], [int(s) for s in start])
        files[key] = write_image(roi, out_dir / naming.filename("Crop", key))
    return files


def test_default_model_through_mrml_nodes(held_out_case, tmp_path):
    """`segment_volume_nodes(model=None)` uses the bundled demo and finds the real tumour."""
    slicer = pytest.importorskip("slicer")  # noqa: F841
    from BraTSMambaLib import mrml

    files = _crop_around_tumour(held_out_case, tmp_path)
    scene = mrml.new_scene()
    nodes = {m: mrml.load_volume(scene, files[m]) for m in cv.MODALITIES}
    seg_node = mrml.segment_volume_nodes(scene, nodes, model=None, device="cpu", fast=True)
    segmentation = seg_node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(3)] == list(cv.REGIONS)
    masks = mrml.segment_masks(seg_node, nodes["t1ce"])
    assert (masks["TC"] & masks["WT"]).any() and (masks["ET"] & masks["TC"]).any()
    predicted = cv.regions_to_labels(np.stack([masks[r] for r in cv.REGIONS]), "2021")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(files["seg"])))
    scores = evaluate_labels(predicted, truth, (1.0, 1.0, 1.0), "2021")
    assert scores["WT"]["dice"] > 0.7, scores["WT"]
