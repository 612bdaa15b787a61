"""nnU-Net's preprocessing on a torch device (`inference.device_preprocessing`) against nnU-Net's own classes:
the hole filling equals scipy's exactly, the crop, mask and properties are identical, the z-scored values
agree to float32 rounding; every other configuration is declined (the caller runs nnU-Net on the CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_fill_holes

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.inference import device_preprocessing as DP
from BraTSMambaLib.inference.preprocessing import preprocess
from Testing.test_cpu_side_fast import plans, synthetic


def random_mask(seed: int, shape=(23, 31, 19)) -> np.ndarray:
    """Blobs with cavities, a tunnel from a cavity to the border, and a mask touching the border."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    mask = np.zeros(shape, dtype=bool)
    for _ in range(4):
        c = rng.uniform(0, 1, 3) * np.array(shape)
        r = rng.uniform(3, 9, 3)
        mask |= ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
    mask &= rng.random(shape) > 0.15                      # pepper holes, some enclosed, some not
    mask[5:9, 10:14, 6:10] = True
    mask[6:8, 11:13, 7:9] = False                         # an enclosed cavity
    mask[2:20, 20, 3:16] = True
    mask[10, 20, 3:16] = False                            # a slit through a wall
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_fill_holes_equals_scipy(seed):
    mask = random_mask(seed)
    got = DP.fill_holes(torch.from_numpy(mask))
    assert got is not None and np.array_equal(got.numpy(), binary_fill_holes(mask))


def test_fill_holes_gives_up_after_its_rounds():
    mask = np.ones((9, 9, 9), dtype=bool)
    mask[1:8, 1:8, 1:8] = False
    mask[4, 4, 4] = True
    mask[1:8, 4, 1:4] = True                              # a wall: reaching the far side takes turns
    assert DP.fill_holes(torch.from_numpy(mask), max_rounds=0) is None
    assert np.array_equal(DP.fill_holes(torch.from_numpy(mask)).numpy(), binary_fill_holes(mask))


def assert_matches_nnunet(channels, spacing, p, device="cpu"):
    ours = DP.preprocess_on_device(channels, spacing, p[0], p[1], device)
    assert ours is not None
    data, props = ours
    ref, ref_props = preprocess(channels, spacing, *p)
    got = data.cpu().numpy()
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.array_equal(got == 0, ref == 0)
    assert np.abs(got - ref).max() < 2e-5, np.abs(got - ref).max()
    assert props == ref_props


@pytest.mark.parametrize("transpose", [(0, 1, 2), (2, 0, 1)])
@pytest.mark.parametrize("touch_border", [True, False])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_synthetic_cases_match_nnunet(transpose, touch_border, dtype):
    data = synthetic(3, touch_border=touch_border, dtype=dtype)
    assert_matches_nnunet(list(data), (1.0, 1.0, 1.0), plans(transpose=transpose))


def test_other_configurations_are_left_to_nnunet(monkeypatch):
    data = list(synthetic(1))
    assert DP.preprocess_on_device(data, (1.0, 1.0, 1.0), *plans(target_zyx=(1.5, 1.0, 1.0))[:2], "cpu") is None
    assert DP.preprocess_on_device(data, (1.0, 1.0, 1.0), *plans(use_mask_for_norm=False)[:2], "cpu") is None
    zeros = [np.zeros((8, 8, 8), np.int16)] * 4
    assert DP.preprocess_on_device(zeros, (1.0, 1.0, 1.0), *plans()[:2], "cpu") is None
    monkeypatch.setenv(DP.ENV_VAR, "0")
    assert DP.preprocess_on_device(data, (1.0, 1.0, 1.0), *plans()[:2], "cpu") is None


@pytest.mark.gpu
def test_gpu_matches_nnunet():
    data = synthetic(5)
    assert_matches_nnunet(list(data), (1.0, 1.0, 1.0), plans(), "cuda")


@pytest.mark.shared_data
def test_real_case_matches_nnunet(brats2018_cases):
    import SimpleITK as sitk

    from BraTSMambaLib.data.case import load_case

    case = load_case(brats2018_cases[0])
    spacing = tuple(reversed(case.reference.GetSpacing()))
    channels = [sitk.GetArrayViewFromImage(case.images[k]) for k in C.MODALITIES]
    assert_matches_nnunet(channels, spacing, plans(), "cuda" if torch.cuda.is_available() else "cpu")
