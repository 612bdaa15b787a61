"""The synthetic phantom: same seed -> same bytes; anatomy, tumour and contrasts look like a BraTS case."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import SimpleITK as sitk

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.data.case import load_case
from BraTSMambaLib.data.check import check_case
from BraTSMambaLib.data.phantom import make_phantom, write_phantom
from BraTSMambaLib.data.phantom_anatomy import brain_anatomy
from BraTSMambaLib.errors import BraTSInputError

SMALL = (48, 48, 32)
LABELS = C.label_convention("2021").values  # tissue -> label value


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def full():
    """One phantom on the default BraTS grid, shared by the plausibility tests."""
    return make_phantom(seed=0)


def test_same_seed_same_bytes(tmp_path):
    a = write_phantom(tmp_path / "a", seed=7, shape_xyz=SMALL)
    b = write_phantom(tmp_path / "b", seed=7, shape_xyz=SMALL)
    c = write_phantom(tmp_path / "c", seed=8, shape_xyz=SMALL)
    da, db, dc = _digests(a), _digests(b), _digests(c)
    names = {f"BraTSPhantom_s7_{k}.nii.gz" for k in ("t1", "t1ce", "t2", "flair", "seg")}
    assert set(da) == names and da == db
    assert all(dc[n.replace("_s7_", "_s8_")] != da[n] for n in names)


def test_written_case_loads_and_checks_clean(tmp_path):
    folder = write_phantom(tmp_path / "case", seed=1, shape_xyz=SMALL)
    case = load_case(folder, require_seg=True)
    assert case.case_id == "BraTSPhantom_s1" and case.naming == "brats2021" and case.labels == "2021"
    assert case.shape_xyz == SMALL and case.spacing == (1.0, 1.0, 1.0)
    assert case.images["t1"].GetPixelID() == sitk.sitkInt16 and case.seg.GetPixelID() == sitk.sitkUInt8
    assert case.reference.GetOrigin() == (0.0, -47.0, 0.0)  # BraTS files: origin (0, -239, 0) on 240 voxels
    mem = make_phantom(seed=1, shape_xyz=SMALL)
    np.testing.assert_array_equal(case.array(), mem.array())
    np.testing.assert_array_equal(case.seg_array(), mem.seg_array())
    report = check_case(folder)
    assert report.usable, report.problems
    assert report.files["seg"].label_values == [0, 1, 2, 4]


def test_refuses_existing_files_and_leaves_nothing_partial(tmp_path):
    folder = write_phantom(tmp_path / "case", seed=2, shape_xyz=SMALL)
    before = _digests(folder)
    (folder / "BraTSPhantom_s2_t2.nii.gz").unlink()
    with pytest.raises(BraTSInputError, match=r"already holds BraTSPhantom_s2_t1\.nii\.gz"):
        write_phantom(folder, seed=2, shape_xyz=SMALL)
    assert "BraTSPhantom_s2_t2.nii.gz" not in _digests(folder)  # nothing was written
    write_phantom(folder, seed=2, shape_xyz=SMALL, overwrite=True)
    assert _digests(folder) == before
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BraTSInputError, match="not a folder"):
        write_phantom(blocker, seed=2, shape_xyz=SMALL)
    with pytest.raises(BraTSInputError, match="shape"):
        write_phantom(tmp_path / "tiny", seed=2, shape_xyz=(4, 4, 4))
    assert not (tmp_path / "tiny").exists()


@pytest.mark.parametrize("seed", [0, 3])
def test_small_phantom_has_every_tissue(seed):
    seg = make_phantom(seed, SMALL).seg_array()
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}


def test_geometry_and_dtypes(full):
    assert full.shape_xyz == (240, 240, 155) and full.spacing == (1.0, 1.0, 1.0)
    for img in (*full.images.values(), full.seg):
        assert img.GetSize() == (240, 240, 155)
        assert img.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        assert img.GetOrigin() == (0.0, -239.0, 0.0)
    aniso = make_phantom(0, SMALL, spacing=(1.0, 1.0, 2.5))
    assert aniso.spacing == (1.0, 1.0, 2.5)


def test_regions_nested_and_sized(full):
    seg = full.seg_array()
    wt, tc, et = C.labels_to_regions(seg, "2021")
    assert not (et & ~tc).any() and not (tc & ~wt).any()
    ml = {r: float(m.sum()) / 1000.0 for r, m in zip(C.REGIONS, (wt, tc, et))}  # 1 mm^3 voxels
    assert 20.0 <= ml["WT"] <= 120.0 and 2.0 <= ml["TC"] < ml["WT"] and 0.5 <= ml["ET"] < ml["TC"]
    # the core is wrapped in edema: few core voxels touch normal brain directly
    from scipy import ndimage

    core_border = tc & ~ndimage.binary_erosion(tc)
    touches_normal = core_border & ndimage.binary_dilation(seg == 0)
    assert touches_normal.sum() < 0.2 * core_border.sum()
    # one connected whole tumour
    _, n = ndimage.label(wt)
    assert n <= 3


def test_tumour_inside_brain_and_zero_background(full):
    anat = brain_anatomy((240, 240, 155))
    arr = full.array()
    seg = full.seg_array()
    assert not (seg[~anat.mask] > 0).any()
    for i, key in enumerate(C.MODALITIES):
        assert (arr[i][~anat.mask] == 0).all(), key
        assert (arr[i][anat.mask] > 0).all(), key  # skull-stripped like BraTS: brain = nonzero voxels
    brain_ml = anat.mask.sum() / 1000.0
    assert 1200 < brain_ml < 2100  # an adult brain (MNI152 mask incl. cerebellum and some CSF)


def _zscored_means(case):
    """Mean z-score (over brain voxels) of each modality in each tissue: the scale networks see."""
    anat = brain_anatomy(case.shape_xyz)
    seg = case.seg_array()
    normal_wm = (anat.wm > 0.9) & (seg == 0)
    regions = {"wm": normal_wm, **{t: seg == v for t, v in LABELS.items()}}
    out = {}
    for i, key in enumerate(C.MODALITIES):
        v = case.array()[i]
        brain = v > 0
        z = (v - v[brain].mean()) / v[brain].std()
        out[key] = {name: float(z[m].mean()) for name, m in regions.items()}
    return out


def test_contrasts_like_a_glioma(full):
    z = _zscored_means(full)
    assert z["t1ce"]["enhancing"] > z["t1ce"]["edema"] + 1.0  # enhancing rim bright on T1ce
    assert z["t1ce"]["enhancing"] > z["t1ce"]["wm"] + 1.0
    assert z["t1ce"]["necrosis"] < z["t1ce"]["wm"]  # necrotic core dark on T1ce
    assert z["flair"]["edema"] > z["flair"]["wm"] + 1.0  # edema bright on FLAIR and T2
    assert z["t2"]["edema"] > z["t2"]["wm"] + 1.0
    assert z["t2"]["necrosis"] > z["t2"]["edema"]  # fluid-like necrosis brightest on T2
    assert z["t1"]["necrosis"] < z["t1"]["wm"] - 1.0  # hypointense core on T1
    for key in C.MODALITIES:  # z-scored intensities stay in the range BraTS cases show
        assert all(-4.0 < v < 5.0 for v in z[key].values()), (key, z[key])


def test_seeds_differ_in_position_and_size():
    segs = [make_phantom(s, SMALL).seg_array() > 0 for s in range(3)]
    centres = [np.argwhere(s).mean(0) for s in segs]
    assert all(np.linalg.norm(centres[i] - centres[j]) > 1.0 for i in range(3) for j in range(i))
    assert len({int(s.sum()) for s in segs}) == 3


@pytest.mark.shared_data
def test_contrasts_close_to_real_brats(full, brats2018_cases):
    """The phantom's z-scored tissue means fall within the spread of real BraTS 2018 cases (+/- 1.5)."""
    real = [_zscored_means_real(load_case(p)) for p in brats2018_cases[:3]]
    mine = _zscored_means(full)
    for key in C.MODALITIES:
        for tissue in LABELS:
            vals = [r[key][tissue] for r in real]
            assert min(vals) - 1.5 <= mine[key][tissue] <= max(vals) + 1.5, (key, tissue, mine[key][tissue], vals)


def _zscored_means_real(case):
    seg = case.seg_array("2021")
    out = {}
    for i, key in enumerate(C.MODALITIES):
        v = case.array()[i]
        brain = v > 0
        z = (v - v[brain].mean()) / v[brain].std()
        out[key] = {t: float(z[(seg == val) & brain].mean()) for t, val in LABELS.items()}
    return out
