"""The fast CPU side of a case is exact: preprocessing inside the nonzero box gives nnU-Net's
whole-volume preprocessing bit for bit, and labelling on the cropped grid gives the label map,
regions and volumes of thresholding the full-size restored probabilities with `conventions`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import get_bbox_from_mask
from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.inference import postprocessing as P
from BraTSMambaLib.inference.pipeline import labels_on_input_grid
from BraTSMambaLib.inference.preprocessing import (
    equivalent_plans, nonzero_box, preprocess, region_dataset_json, restore,
)

SHAPE = (30, 36, 28)
CONVENTIONS = ("2021", "2023", "nnunet")


def plans(target_zyx=(1.0, 1.0, 1.0), *, transpose=(0, 1, 2), use_mask_for_norm=True) -> tuple:
    raw = equivalent_plans(target_zyx, (16, 16, 16), use_mask_for_norm=use_mask_for_norm)
    raw["transpose_forward"] = list(transpose)
    raw["transpose_backward"] = [int(i) for i in np.argsort(transpose)]
    pm = PlansManager(raw)
    return pm, pm.get_configuration("3d_fullres"), region_dataset_json()


def synthetic(seed: int = 0, *, touch_border: bool = True, dtype=np.int16) -> np.ndarray:
    """(4, z, y, x) brain-like volume: an ellipsoid (cut by the volume's x faces when `touch_border`)
    with a zero cavity inside (a hole nnU-Net fills), zero voxels in single channels, a stray voxel."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    rx = 16.0 if touch_border else 10.0
    brain = ((z - 15) / 11) ** 2 + ((y - 17) / 13) ** 2 + ((x - 14) / rx) ** 2 <= 1
    cavity = ((z - 14) / 3) ** 2 + ((y - 16) / 4) ** 2 + ((x - 13) / 3) ** 2 <= 1
    data = rng.integers(1, 3000, size=(4, *SHAPE)).astype(dtype)
    data *= (brain & ~cavity)[None]
    data[2][rng.random(SHAPE) < 0.1] = 0  # some voxels zero in one channel only
    data[:, 2, 3, 4] = 7  # a stray nonzero voxel outside the brain widens the box
    return data


def nnunet_whole(data: np.ndarray, spacing_zyx, pm, cm, dj) -> tuple[np.ndarray, dict]:
    """nnU-Net's own preprocessing of the whole float32 stack (what `preprocess` must reproduce)."""
    props = {"spacing": [float(s) for s in spacing_zyx]}
    out, _, props = DefaultPreprocessor(verbose=False).run_case_npy(data.astype(np.float32), None, props, pm, cm, dj)
    return np.ascontiguousarray(out, dtype=np.float32), props


def assert_same_preprocessing(ours: tuple, theirs: tuple) -> None:
    (a, pa), (b, pb) = ours, theirs
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), "preprocessed arrays differ in some bits"
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k] == pb[k] and type(pa[k]) is type(pb[k]), (k, pa[k], pb[k])


def reference_labels(prob, props, plans_, convention):
    """The slow, obvious path: full-size probabilities, threshold, then the conventions' functions."""
    full = restore(prob, props, *plans_)
    labels = C.regions_to_labels(full > P.THRESHOLD, convention)
    return full, labels, C.labels_to_regions(labels, convention)


# --- preprocessing ------------------------------------------------------------------------------


def test_synthetic_volume_has_what_the_proof_needs():
    data = synthetic()
    mask = np.any(data != 0, axis=0)
    filled = create_nonzero_mask(data.astype(np.float32))
    assert np.count_nonzero(filled & ~mask) > 50, "the cavity must be a hole nnU-Net fills"
    box = nonzero_box(list(data))
    assert box[2] == slice(0, SHAPE[2]), "the brain touches both x faces"
    assert box[0].start > 0 and box[1].stop < SHAPE[1]  # elsewhere the box has a margin
    tight = nonzero_box(list(data), margin=0)
    assert [[s.start, s.stop] for s in tight] == get_bbox_from_mask(filled)  # filling adds nothing outside it
    assert [s.stop - s.start for s in box] == [s.stop - s.start + 2 for s in tight[:2]] + [SHAPE[2]]


@pytest.mark.parametrize("transpose", [(0, 1, 2), (2, 0, 1)])
@pytest.mark.parametrize("use_mask_for_norm", [True, False])
@pytest.mark.parametrize("touch_border", [True, False])
def test_preprocess_equals_nnunet_on_the_whole_volume(transpose, use_mask_for_norm, touch_border):
    data = synthetic(1, touch_border=touch_border)
    p = plans(transpose=transpose, use_mask_for_norm=use_mask_for_norm)
    theirs = nnunet_whole(data, (1.0, 1.0, 1.0), *p)
    assert_same_preprocessing(preprocess(data, (1.0, 1.0, 1.0), *p), theirs)  # a stack
    assert_same_preprocessing(preprocess(list(data), (1.0, 1.0, 1.0), *p), theirs)  # four int16 channels


def test_preprocess_equals_nnunet_when_resampling():
    data = synthetic(2)
    p = plans((1.0, 1.0, 1.0))
    spacing = (2.0, 1.0, 1.3)
    ours, theirs = preprocess(list(data), spacing, *p), nnunet_whole(data, spacing, *p)
    assert ours[0].shape[1:] != ours[1]["shape_after_cropping_and_before_resampling"]  # it did resample
    assert_same_preprocessing(ours, theirs)


def test_preprocess_float64_input_casts_first():
    """Float64 values too small for float32 are zero for nnU-Net (it casts first), so they are outside the box."""
    data = synthetic(3, touch_border=False).astype(np.float64)
    data[:, 1, 1, 1] = 1e-60
    p = plans()
    assert_same_preprocessing(preprocess(list(data), (1.0, 1.0, 1.0), *p),
                              nnunet_whole(data.astype(np.float32), (1.0, 1.0, 1.0), *p))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # nnU-Net normalises an empty mask
def test_preprocess_all_zero_volume():
    data = np.zeros((4, *SHAPE), dtype=np.int16)
    p = plans()
    assert nonzero_box(list(data)) is None
    assert_same_preprocessing(preprocess(data, (1.0, 1.0, 1.0), *p), nnunet_whole(data, (1.0, 1.0, 1.0), *p))


# --- postprocessing -----------------------------------------------------------------------------


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_label_map_and_regions_equal_the_conventions(convention):
    rng = np.random.default_rng(0)
    regions = rng.random((3, 20, 21, 22)) < 0.4
    regions[:, 0, 0, :8] = np.array([[(i >> k) & 1 for i in range(8)] for k in range(3)], dtype=bool)  # every combo
    expected = C.regions_to_labels(regions, convention)
    table = P._label_table(C.label_convention(convention).name)
    for got in (P.label_map(regions, convention), P.label_map(regions.astype(np.uint8), convention),
                P.label_map(torch.from_numpy(regions), convention),
                P._label_map_torch(torch.from_numpy(regions), table).numpy(),  # the CUDA code, run on the CPU
                P._label_map_torch(torch.from_numpy(regions.astype(np.float32)), table).numpy()):
        assert isinstance(got, np.ndarray) and got.dtype == np.uint8 and np.array_equal(got, expected)
    expected_regions = C.labels_to_regions(expected, convention)
    conv = C.label_convention(convention)
    for got in (P.consistent_regions(expected, convention), P.consistent_regions(expected.astype(np.int16), convention),
                P.consistent_regions(expected.astype(np.float32), convention),
                P.consistent_regions(torch.from_numpy(expected), convention),
                P._consistent_regions_torch(torch.from_numpy(expected), conv).numpy()):
        assert isinstance(got, np.ndarray) and got.dtype == bool and np.array_equal(got, expected_regions)


def test_consistent_regions_refuses_values_outside_the_convention():
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[1, 1, 1] = 3
    with pytest.raises(BraTSInputError, match=r"\[3\]"):
        P.consistent_regions(labels, "2021")
    with pytest.raises(BraTSInputError, match=r"\[3\]"):
        P.consistent_regions(torch.from_numpy(labels), "2021")
    with pytest.raises(BraTSInputError, match=r"\[3\]"):
        P._consistent_regions_torch(torch.from_numpy(labels), C.label_convention("2021"))
    assert P.consistent_regions(labels, "2023")[:, 1, 1, 1].all()


@pytest.mark.parametrize("spacing,transpose", [((1.0, 1.0, 1.0), (0, 1, 2)), ((1.0, 1.0, 1.0), (2, 0, 1)),
                                               ((2.0, 1.0, 1.3), (0, 1, 2))])
@pytest.mark.parametrize("convention", ["2021", "2023"])
def test_labels_on_cropped_grid_equal_thresholding_the_full_probabilities(spacing, transpose, convention):
    data = synthetic(4)
    p = plans(transpose=transpose)
    pre, props = preprocess(list(data), spacing, *p)
    rng = np.random.default_rng(5)
    prob = rng.random((3, *pre.shape[1:]), dtype=np.float32)
    prob[:, ::7] = 0.5  # exactly at the threshold: not in the region
    full, labels, regions = reference_labels(prob, props, p, convention)
    assert labels.any() and not labels.all()
    for given in (prob, torch.from_numpy(prob)):
        got_labels, got_regions, got_full = labels_on_input_grid(given, props, p, convention, probabilities=True)
        assert got_labels.dtype == np.uint8 and got_labels.shape == data.shape[1:]
        assert np.array_equal(got_labels, labels) and np.array_equal(got_regions, regions)
        assert np.array_equal(got_full, full)
        assert P.volumes_ml(got_regions, got_labels, (1.0, 1.1, 2.0), convention) == \
            P.volumes_ml(regions, labels, (1.0, 1.1, 2.0), convention)
    assert labels_on_input_grid(prob, props, p, convention)[2] is None  # no full-size probabilities unless asked


@pytest.mark.gpu
def test_labels_on_the_gpu_equal_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    data = synthetic(6)
    p = plans()
    pre, props = preprocess(list(data), (1.0, 1.0, 1.0), *p)
    prob = torch.rand((3, *pre.shape[1:]), generator=torch.Generator().manual_seed(0))
    _, labels, regions = reference_labels(prob, props, p, "2021")
    got_labels, got_regions, _ = labels_on_input_grid(prob.cuda(), props, p, "2021")
    assert np.array_equal(got_labels, labels) and np.array_equal(got_regions, regions)


# --- a real case --------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_case_is_exact(brats2018_cases):
    import SimpleITK as sitk

    from BraTSMambaLib.data.case import load_case

    case = load_case(brats2018_cases[0])
    p = plans()
    spacing = tuple(reversed(case.reference.GetSpacing()))
    channels = [sitk.GetArrayViewFromImage(case.images[k]) for k in C.MODALITIES]
    ours = preprocess(channels, spacing, *p)
    assert_same_preprocessing(ours, nnunet_whole(case.array(), spacing, *p))
    prob = torch.rand((3, *ours[0].shape[1:]), generator=torch.Generator().manual_seed(0)) ** 3  # some tumour
    _, labels, regions = reference_labels(prob, ours[1], p, "2021")
    got_labels, got_regions, _ = labels_on_input_grid(prob, ours[1], p, "2021")
    assert np.array_equal(got_labels, labels) and np.array_equal(got_regions, regions)
    volumes = P.volumes_ml(got_regions, got_labels, case.spacing, "2021")
    assert volumes == P.volumes_ml(regions, labels, case.spacing, "2021") and volumes["regions_ml"]["WT"] > 0



def test_region_masks_of_half_precision_tensors_match_restore():
    """A bf16/fp16 tensor is thresholded as `restore` hands it on (cast to float32 first)."""
    prob = torch.rand((3, 6, 7, 8), generator=torch.Generator().manual_seed(1))
    for dtype in (torch.bfloat16, torch.float16):
        p = prob.to(dtype)
        assert np.array_equal(P.region_masks(p, 0.3), p.float().numpy() > 0.3)


def test_label_map_refuses_a_wrong_number_of_regions():
    with pytest.raises(BraTSInputError, match="expected 3 region masks"):
        P.label_map(np.zeros((2, 4, 4, 4), dtype=bool))


# --- the pipeline -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from BraTSMambaLib.inference.package import save_package
    from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model
    from BraTSMambaLib.nets import build_model, get_spec

    kw = {k: v for k, v in get_spec("segmamba").tiny.items() if k != "patch_size"}
    torch.manual_seed(0)
    net = build_model("segmamba", patch_size=(32, 32, 32), **kw)
    pkg = save_package(tmp_path_factory.mktemp("pkg") / "tiny", "segmamba", [net.state_dict()],
                       patch_size=(32, 32, 32), overrides=kw, description="random init, tests only")
    return load_model(pkg, SegmentOptions(device="cpu", tta=1, overlap=0.0))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.1, 2.0)])
def test_predict_labels_equals_labelling_predict_case(tiny_model, spacing):
    """The pipeline's labels (cropped grid) are those of thresholding predict_case's full probabilities."""
    from BraTSMambaLib.data.phantom import make_phantom
    from BraTSMambaLib.inference.pipeline import (
        SegmentOptions,
        predict_case,
        predict_labels,
    )

    case = make_phantom(2, (44, 40, 16 if spacing[2] > 1 else 32), spacing=spacing)
    options = SegmentOptions(device="cpu", tta=1, overlap=0.0, labels="2023")
    full, _ = predict_case(case, tiny_model, options)
    ours = predict_labels(case, tiny_model, options, probabilities=True)
    labels = C.regions_to_labels(full > 0.5, "2023")
    assert labels.shape == case.seg_array().shape
    assert np.array_equal(ours.labels, labels) and np.array_equal(ours.regions, C.labels_to_regions(labels, "2023"))
    assert np.array_equal(ours.probabilities, full)
    assert predict_labels(case, tiny_model, options).probabilities is None
    assert {"preprocess", "inference", "postprocess"} <= ours.times.keys()


def test_preprocess_channels_of_different_dtypes_cast_one_by_one():
    """Each channel is cast to float32 on its own (as BraTSCase.array does), never through a common dtype."""
    data = synthetic(7)
    channels = [data[0], np.where(data[1] != 0, data[1] + 0.25, 0).astype(np.float32),
                data[2].astype(np.int64) * (2**40 + 1), data[3]]
    reference = np.stack([c.astype(np.float32) for c in channels])
    p = plans()
    assert_same_preprocessing(preprocess(channels, (1.0, 1.0, 1.0), *p), nnunet_whole(reference, (1.0, 1.0, 1.0), *p))
