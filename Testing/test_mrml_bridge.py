"""The Qt-free MRML bridge with a real MRML scene (PyPI slicer-core): volume nodes <-> BraTSCase,
WT/TC/ET segmentations, volumes, label maps, storage-node files; real BraTS cases and oblique grids."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from BraTSMambaLib import mrml  # noqa: E402
from BraTSMambaLib.data import conventions as cv  # noqa: E402
from BraTSMambaLib.data.case import load_case  # noqa: E402
from BraTSMambaLib.data.io import geometry_differences  # noqa: E402
from BraTSMambaLib.errors import BraTSInputError  # noqa: E402
from BraTSMambaLib.mrml.geometry import (RAS_TO_LPS, ijk_to_world, image_from_volume_node,  # noqa: E402
                                         image_ijk_to_lps, volume_node_from_image)


def _rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


def _oblique_images(shape_zyx=(12, 18, 20), seed=0) -> dict[str, sitk.Image]:
    rng = np.random.default_rng(seed)
    images = {}
    for m in cv.MODALITIES:
        img = sitk.GetImageFromArray(rng.integers(0, 1000, shape_zyx).astype(np.int16))
        img.SetSpacing((0.9, 1.1, 2.5))
        img.SetOrigin((-31.5, 12.25, -40.0))
        img.SetDirection(tuple(_rotation(0.3, -0.45).ravel()))
        images[m] = img
    return images


@pytest.fixture()
def scene():
    return mrml.new_scene()


def _nodes(scene, images, prefix="case"):
    return {m: volume_node_from_image(scene, img, f"{prefix}_{m}") for m, img in images.items()}


def test_ras_lps_conversion_agrees_with_slicers_own_reader(scene, tmp_path):
    """An oblique, anisotropic NIfTI read by Slicer's reader (RAS) converts back to SimpleITK's LPS grid."""
    image = _oblique_images()["t1"]
    path = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(image, str(path))
    node = mrml.load_volume(scene, path)
    m = ijk_to_world(node)
    assert np.allclose(m, RAS_TO_LPS @ image_ijk_to_lps(image), atol=1e-4)
    assert m[0, 3] == pytest.approx(31.5, abs=1e-4) and m[1, 3] == pytest.approx(-12.25, abs=1e-4)  # x, y flipped
    back = image_from_volume_node(node)
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    # and the other way: our node writer matches Slicer's reader
    ours = volume_node_from_image(scene, image, "ours")
    assert np.allclose(ijk_to_world(ours), m, atol=1e-4)


def test_linear_parent_transform_moves_the_world_grid(scene):
    images = _oblique_images()
    node = volume_node_from_image(scene, images["t1"], "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 10.0)  # +10 mm towards R = -10 mm in LPS x
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    assert image_from_volume_node(node).GetOrigin()[0] == pytest.approx(images["t1"].GetOrigin()[0] - 10.0)


@pytest.mark.shared_data
def test_case_from_real_brats2018_nodes_equals_load_case(scene, brats2018_cases):
    folder = brats2018_cases[0]
    case_id = folder.name
    nodes = {m: mrml.load_volume(scene, folder / f"{case_id}_{m}.nii.gz") for m in cv.MODALITIES}
    assert mrml.guess_modalities([n.GetName() for n in nodes.values()]) == {m: f"{case_id}_{m}" for m in cv.MODALITIES}
    case = mrml.case_from_volume_nodes(nodes)
    ref = load_case(folder)
    assert case.case_id == case_id
    assert np.array_equal(case.array(), ref.array())
    for m in cv.MODALITIES:
        assert not geometry_differences(case.images[m], ref.images[m], atol=1e-6)


@pytest.mark.shared_data
def test_case_from_brats2023_sample_nodes(scene, shared_data):
    folder = shared_data / "brats2023-gli-sample"
    nodes = [mrml.load_volume(scene, p) for p in sorted(folder.glob("*.nii.gz"))]
    guessed = mrml.guess_modalities([n.GetName() for n in nodes])
    by_name = {n.GetName(): n for n in nodes}
    assert guessed == {"t1": "BraTS-GLI-00001-000-t1n", "t1ce": "BraTS-GLI-00001-000-t1c",
                       "t2": "BraTS-GLI-00001-000-t2w", "flair": "BraTS-GLI-00001-000-t2f"}
    case = mrml.case_from_volume_nodes({k: by_name[v] for k, v in guessed.items()})
    ref = load_case(folder)
    assert case.case_id == "BraTS-GLI-00001-000"
    assert np.array_equal(case.array(), ref.array())


def test_guess_modalities_prefers_the_most_complete_case():
    names = ["A_t1", "A_t1ce", "B-t1n", "B-t1c", "B-t2w", "B-t2f", "B-seg", "notes", "C_0002"]
    assert mrml.guess_modalities(names) == {"t1": "B-t1n", "t1ce": "B-t1c", "t2": "B-t2w", "flair": "B-t2f"}
    assert mrml.guess_modalities(["x", "y"]) == {}


def test_missing_modality_is_refused(scene):
    nodes = _nodes(scene, _oblique_images())
    del nodes["flair"]
    with pytest.raises(BraTSInputError, match="FLAIR"):
        mrml.case_from_volume_nodes(nodes)
    nodes["flair"] = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(BraTSInputError, match="'empty'.*no image data"):
        mrml.case_from_volume_nodes(nodes)


@pytest.mark.parametrize("change", ["origin", "direction", "spacing", "size"])
def test_mismatched_geometry_is_refused_naming_the_node(scene, change):
    images = _oblique_images()
    t2 = images["t2"]
    if change == "origin":
        t2.SetOrigin((t2.GetOrigin()[0] + 0.5, *t2.GetOrigin()[1:]))
    elif change == "direction":
        t2.SetDirection(tuple(_rotation(0.3, -0.40).ravel()))
    elif change == "spacing":
        t2.SetSpacing((0.9, 1.1, 2.0))
    else:
        images["t2"] = sitk.GetImageFromArray(np.zeros((12, 18, 21), np.int16))
        images["t2"].CopyInformation(sitk.GetImageFromArray(np.zeros((12, 18, 21), np.int16)))
    nodes = _nodes(scene, images)
    with pytest.raises(BraTSInputError, match=rf"'case_t2' \(T2\).*{change}"):
        mrml.case_from_volume_nodes(nodes)


def _regions(shape, seed=1):
    rng = np.random.default_rng(seed)
    wt = rng.random(shape) < 0.3
    tc = wt & (rng.random(shape) < 0.5)
    et = tc & (rng.random(shape) < 0.5)
    return np.stack([wt, tc, et])


def test_segmentation_on_oblique_grid_round_trips(scene, tmp_path):
    images = _oblique_images()
    nodes = _nodes(scene, images)
    regions = _regions(sitk.GetArrayViewFromImage(images["t1ce"]).shape)
    seg = mrml.segmentation_from_prediction(scene, regions, nodes["t1ce"])
    s = seg.GetSegmentation()
    assert [s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments())] == list(cv.REGIONS)
    assert s.GetNumberOfLayers() == 3  # each region its own layer: overlap is representable
    masks = mrml.segment_masks(seg, nodes["t1ce"])
    for i, r in enumerate(cv.REGIONS):
        assert np.array_equal(masks[r], regions[i]), r
        segment = s.GetSegment(s.GetSegmentIdBySegmentName(r))
        assert segment.GetColor() == pytest.approx(cv.REGION_COLORS[r])
        terminology = segment.GetTerminology()
        assert f"{cv.TERMINOLOGY_CATEGORY[0]}^{cv.TERMINOLOGY_CATEGORY[1]}^" in terminology
        assert f"{cv.TERMINOLOGY_TYPE[0]}^{cv.TERMINOLOGY_TYPE[1]}^" in terminology
    spacing = images["t1ce"].GetSpacing()
    vol = mrml.segment_volumes_ml(seg)
    for i, r in enumerate(cv.REGIONS):
        assert vol[r] == pytest.approx(regions[i].sum() * np.prod(spacing) / 1000.0, rel=1e-6)
    assert seg.GetDisplayNode() is not None and seg.GetSegmentation().ContainsRepresentation("Closed surface")

    # written by the storage node, read back by slicerio: names, overlap, geometry in LPS
    import slicerio

    path = mrml.save_node(seg, tmp_path / "oblique.seg.nrrd")
    read = slicerio.read_segmentation(str(path))
    assert [x["name"] for x in read["segments"]] == list(cv.REGIONS)
    assert read["segments"][0]["terminology"]["type"] == list(cv.TERMINOLOGY_TYPE)
    assert np.allclose(read["ijkToLPS"], image_ijk_to_lps(images["t1ce"]), atol=1e-4)
    for i, r in enumerate(cv.REGIONS):
        assert np.array_equal(np.transpose(slicerio.segment_mask(read, r), (2, 1, 0)), regions[i])
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


def test_replace_target_and_empty_region(scene):
    images = _oblique_images()
    nodes = _nodes(scene, images)
    shape = sitk.GetArrayViewFromImage(images["t1ce"]).shape
    first = mrml.segmentation_from_prediction(scene, _regions(shape, 1), nodes["t1ce"])
    regions = _regions(shape, 2)
    regions[2] = False  # no enhancing tumour
    same = mrml.segmentation_from_prediction(scene, {r: regions[i] for i, r in enumerate(cv.REGIONS)},
                                             nodes["t1ce"], target=first)
    assert same is first and scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert first.GetSegmentation().GetNumberOfSegments() == 3
    masks = mrml.segment_masks(first, nodes["t1ce"])
    assert not masks["ET"].any() and np.array_equal(masks["WT"], regions[0])
    assert mrml.segment_volumes_ml(first)["ET"] == 0.0
    table = mrml.volumes_table(scene, first)
    assert table.GetNumberOfRows() == 3 and table.GetCellText(2, 0) == "ET" and float(table.GetCellText(2, 2)) == 0.0


def test_bad_predictions_are_refused_and_leave_the_scene_alone(scene):
    nodes = _nodes(scene, _oblique_images())
    before = scene.GetNumberOfNodes()
    with pytest.raises(BraTSInputError, match="shape"):
        mrml.segmentation_from_prediction(scene, np.zeros((3, 4, 4, 4), bool), nodes["t1ce"])
    with pytest.raises(BraTSInputError, match="lacks regions"):
        mrml.segmentation_from_prediction(scene, {"WT": np.zeros((12, 18, 20), bool)}, nodes["t1ce"])
    assert scene.GetNumberOfNodes() == before


@pytest.mark.shared_data
def test_real_labels_segments_volumes_and_label_map(scene, brats2018_cases, tmp_path):
    folder = brats2018_cases[1]
    case = load_case(folder)
    ref_node = mrml.load_volume(scene, case.paths["t1ce"])
    labels = case.seg_array("2021")
    regions = cv.labels_to_regions(labels, "2021")
    seg = mrml.segmentation_from_prediction(scene, regions, ref_node, show3d=False)
    masks = mrml.segment_masks(seg, ref_node)
    assert masks["ET"].sum() > 0 and (masks["TC"] & ~masks["WT"]).sum() == 0 and (masks["ET"] & masks["TC"]).sum() > 0
    vol = mrml.segment_volumes_ml(seg)
    assert [vol[r] for r in cv.REGIONS] == pytest.approx([regions[i].sum() / 1000.0 for i in range(3)])
    lm = mrml.labelmap_from_prediction(scene, regions, ref_node, convention="2021")
    assert np.array_equal(slicer.util.arrayFromVolume(lm), labels)
    lm23 = mrml.labelmap_from_prediction(scene, masks, ref_node, convention="2023")
    assert set(np.unique(slicer.util.arrayFromVolume(lm23))) <= {0, 1, 2, 3}
    # the .seg.nrrd the library's CLI path would load gives back the same masks
    path = mrml.save_node(seg, tmp_path / f"{case.case_id}.seg.nrrd")
    again = mrml.pipeline.read_seg_nrrd_masks(path, ref_node)
    assert all(np.array_equal(again[r], masks[r]) for r in cv.REGIONS)
    other = mrml.load_volume(scene, load_case(brats2018_cases[0]).paths["t1ce"])
    other.SetOrigin(1.0, 2.0, 3.0)
    with pytest.raises(BraTSInputError, match="grid does not match"):
        mrml.pipeline.read_seg_nrrd_masks(path, other)
