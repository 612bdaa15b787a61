import numpy as np
import pytest

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.errors import BraTSInputError


def _random_labels(conv: str, shape=(6, 7, 8), seed=0) -> np.ndarray:
    values = sorted(C.label_convention(conv).allowed)
    return np.random.default_rng(seed).choice(values, size=shape).astype(np.uint8)


@pytest.mark.parametrize("src,dst", [("2021", "2023"), ("2023", "2021"), ("2021", "nnunet"), ("nnunet", "2023")])
def test_label_round_trips(src, dst):
    lab = _random_labels(src)
    assert np.array_equal(C.convert_labels(C.convert_labels(lab, src, dst), dst, src), lab)


@pytest.mark.parametrize("conv", ["2021", "2023", "nnunet"])
def test_regions_round_trip_and_nesting(conv):
    lab = _random_labels(conv)
    reg = C.labels_to_regions(lab, conv)
    assert reg.shape == (3, *lab.shape)
    wt, tc, et = reg
    assert not (et & ~tc).any() and not (tc & ~wt).any()
    assert np.array_equal(C.regions_to_labels(reg, conv), lab)


def test_region_definitions_match_brats():
    lab21 = np.array([0, 1, 2, 4])
    wt, tc, et = C.labels_to_regions(lab21, "2021")
    assert wt.tolist() == [False, True, True, True]
    assert tc.tolist() == [False, True, False, True]
    assert et.tolist() == [False, False, False, True]
    assert C.convert_labels(lab21, "2021", "2023").tolist() == [0, 1, 2, 3]
    assert C.convert_labels(lab21, "2021", "nnunet").tolist() == [0, 2, 1, 3]
    assert C.NNUNET_REGIONS == {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}


def test_assembly_paints_in_nnunet_order():
    # TC outside WT still becomes core; ET painted last wins
    regions = np.zeros((3, 4), bool)
    regions[0, [0, 1]] = True
    regions[1, [1, 2]] = True
    regions[2, [2]] = True
    assert C.regions_to_labels(regions, "2021").tolist() == [2, 1, 4, 0]


def test_bad_labels_are_refused():
    with pytest.raises(BraTSInputError, match=r"\[3\].*2021"):
        C.check_labels(np.array([0, 1, 3]), "2021", "x_seg.nii.gz")
    with pytest.raises(BraTSInputError, match="unknown label convention"):
        C.label_convention("1999")


@pytest.mark.parametrize(
    "name,expected",
    [
        ("Brats18_2013_11_1_t1ce.nii.gz", ("Brats18_2013_11_1", "t1ce", "brats2021")),
        ("Brats18_2013_11_1_t1.nii.gz", ("Brats18_2013_11_1", "t1", "brats2021")),
        ("Brats18_2013_11_1_seg.nii.gz", ("Brats18_2013_11_1", "seg", "brats2021")),
        ("BraTS-GLI-00001-000-t2f.nii.gz", ("BraTS-GLI-00001-000", "flair", "brats2023")),
        ("BraTS-GLI-00001-000-t1c.nrrd", ("BraTS-GLI-00001-000", "t1ce", "brats2023")),
        ("BraTS21_00001_0003.nii.gz", ("BraTS21_00001", "flair", "nnunet")),
        ("notes.txt", None),
    ],
)
def test_parse_filename(name, expected):
    assert C.parse_filename(name) == expected


def test_naming_filename_round_trip():
    for naming in C.NAMINGS.values():
        for key in naming.suffixes:
            fn = naming.filename("CaseX", key)
            assert C.parse_filename(fn) == ("CaseX", key, naming.name)
