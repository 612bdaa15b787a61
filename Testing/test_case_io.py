"""Case I/O: reading, validation errors (each naming the file and the problem), atomic writes, both namings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.data import io
from BraTSMambaLib.data.case import BraTSCase, find_case_files, find_cases, load_case
from BraTSMambaLib.errors import BraTSInputError

SIZE_ZYX = (8, 10, 12)


def _image(seed: int = 0, size_zyx=SIZE_ZYX, dtype=np.float32, spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    arr = (np.random.default_rng(seed).random(size_zyx) * 100 + 1).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((0.0, -239.0, 0.0))
    return img


def _seg(reference: sitk.Image, values=(0, 1, 2, 4)) -> np.ndarray:
    n = int(np.prod(SIZE_ZYX))
    return np.resize(np.array(values, np.uint8), n).reshape(SIZE_ZYX)


def write_case(folder: Path, naming: str = "brats2021", case_id: str = "Case_001", seg=True, change=None,
               ext: str = ".nii.gz") -> dict[str, Path]:
    """A tiny valid case; `change` maps a key to a function altering its image before writing."""
    nm = C.NAMINGS[naming]
    paths = {}
    ref = _image(0)
    for i, key in enumerate(C.MODALITIES):
        img = _image(i)
        if change and key in change:
            img = change[key](img)
        paths[key] = io.write_image(img, folder / nm.filename(case_id, key, ext))
    if seg:
        conv = "2023" if naming == "brats2023" else "2021"
        lab = _seg(ref, sorted(C.label_convention(conv).allowed))
        img = io.label_image(lab, ref)
        if change and "seg" in change:
            img = change["seg"](img)
        paths["seg"] = io.write_image(img, folder / nm.filename(case_id, "seg", ext))
    return paths


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- read_image ---------------------------------------------------------------------------------


def test_read_image_missing_file(tmp_path):
    with pytest.raises(BraTSInputError, match=r"nope_t1\.nii\.gz: file not found"):
        io.read_image(tmp_path / "nope_t1.nii.gz")


def test_read_image_non_image_file(tmp_path):
    bad = tmp_path / "x_t1.nii.gz"
    bad.write_text("this is not a NIfTI file\n")
    with pytest.raises(BraTSInputError, match=r"x_t1\.nii\.gz: cannot be read as an image"):
        io.read_image(bad)


def test_read_image_2d_and_4d(tmp_path):
    p2 = io.write_image(sitk.GetImageFromArray(np.ones((10, 12), np.float32)), tmp_path / "flat.nii.gz")
    with pytest.raises(BraTSInputError, match=r"flat\.nii\.gz: is 2D"):
        io.read_image(p2)
    series = sitk.JoinSeries([_image(0), _image(1)])
    p4 = io.write_image(series, tmp_path / "series.nii.gz")
    with pytest.raises(BraTSInputError, match=r"series\.nii\.gz: is 4D"):
        io.read_image(p4)
    # a 4D file with one time point is a 3D volume
    p41 = io.write_image(sitk.JoinSeries([_image(0)]), tmp_path / "one.nii.gz")
    img = io.read_image(p41)
    assert img.GetDimension() == 3 and img.GetSize() == _image(0).GetSize()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(img), sitk.GetArrayFromImage(_image(0)))


def test_read_image_vector_pixels(tmp_path):
    p = io.write_image(sitk.Compose(_image(0), _image(1)), tmp_path / "vec.nrrd")
    with pytest.raises(BraTSInputError, match=r"vec\.nrrd: has 2 components"):
        io.read_image(p)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_truncated_nifti_is_refused(tmp_path, ext):
    """SimpleITK fills a cut-off NIfTI with zeros; we refuse it instead of segmenting half a scan."""
    full = io.write_image(_image(0, size_zyx=(20, 24, 28)), tmp_path / f"full{ext}")
    data = full.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BraTSInputError, match=rf"cut{ext.replace('.', chr(92) + '.')}: truncated"):
        io.read_image(cut)
    assert io.read_image(full).GetSize() == (28, 24, 20)


def test_multi_member_gzip_nifti_is_accepted(tmp_path):
    """A valid .nii.gz written as two gzip members (trailer size of the last member only) still reads."""
    import gzip

    raw = io.write_image(_image(0), tmp_path / "plain.nii").read_bytes()
    p = tmp_path / "two_members.nii.gz"
    p.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert io.read_image(p).GetSize() == _image(0).GetSize()


def test_read_image_nonfinite(tmp_path):
    arr = sitk.GetArrayFromImage(_image(0))
    arr[1, 2, 3] = np.nan
    arr[2, 2, 3] = np.inf
    img = sitk.GetImageFromArray(arr)
    p = io.write_image(img, tmp_path / "nan.mha")
    with pytest.raises(BraTSInputError, match=r"nan\.mha: 2 voxels are NaN or infinite"):
        io.read_image(p)
    assert np.isnan(sitk.GetArrayFromImage(io.read_image(p, check_finite=False))).sum() == 1


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_read_round_trip_keeps_geometry(tmp_path, ext):
    img = _image(3, spacing=(0.9, 1.1, 2.5))
    img.SetOrigin((10.5, -20.25, 3.0))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    back = io.read_image(io.write_image(img, tmp_path / f"img{ext}"))
    assert io.geometry_differences(back, img, atol=1e-5) == []
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(img))


# --- atomic writes ------------------------------------------------------------------------------


def test_write_refuses_existing_output_and_keeps_it(tmp_path):
    p = io.write_image(_image(0), tmp_path / "a.nii.gz")
    before = p.read_bytes()
    with pytest.raises(BraTSInputError, match=r"a\.nii\.gz: already exists"):
        io.write_image(_image(1), p)
    assert p.read_bytes() == before
    io.write_image(_image(1), p, overwrite=True)
    assert p.read_bytes() != before
    assert _listing(tmp_path) == ["a.nii.gz"]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.seg.nrrd"
    with pytest.raises(RuntimeError, match="interrupted"):
        with io.atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".seg.nrrd") and tmp != target
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert _listing(tmp_path) == []


def test_atomic_write_text(tmp_path):
    p = io.atomic_write_text(tmp_path / "sub" / "r.json", "{}")
    assert p.read_text() == "{}"
    with pytest.raises(BraTSInputError, match="already exists"):
        io.atomic_write_text(p, "[]")
    io.atomic_write_text(p, "[]", overwrite=True)
    assert p.read_text() == "[]" and _listing(p.parent) == ["r.json"]


def test_write_image_failure_leaves_nothing(tmp_path):
    with pytest.raises(BraTSInputError, match="unknown image extension"):
        io.write_image(_image(0), tmp_path / "a.txt")
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(BraTSInputError, match=r"a\.nii\.gz: cannot create its folder"):
        io.write_image(_image(0), tmp_path / "blocker" / "a.nii.gz")
    (tmp_path / "blocker").unlink()
    with pytest.raises(BraTSInputError, match=r"a\.mhd: detached-header files cannot be written atomically"):
        io.write_image(_image(0), tmp_path / "a.mhd")
    assert _listing(tmp_path) == []


def test_write_label_map_copies_geometry(tmp_path):
    ref = _image(0, spacing=(0.5, 0.7, 3.0))
    ref.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    lab = _seg(ref).astype(np.int64)
    p = io.write_label_map(lab, ref, tmp_path / "seg.nii.gz")
    back = sitk.ReadImage(str(p))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert io.geometry_differences(back, ref, atol=1e-6) == []
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), lab)
    with pytest.raises(BraTSInputError, match="shape"):
        io.write_label_map(lab[:-1], ref, tmp_path / "bad.nii.gz")
    with pytest.raises(BraTSInputError, match="not integers"):
        io.write_label_map(lab + 0.5, ref, tmp_path / "bad.nii.gz")
    assert _listing(tmp_path) == ["seg.nii.gz"]


# --- discovery and validation -------------------------------------------------------------------


@pytest.mark.parametrize("naming,conv", [("brats2021", "2021"), ("brats2023", "2023")])
def test_load_case_both_namings(tmp_path, naming, conv):
    paths = write_case(tmp_path, naming)
    case = load_case(tmp_path)
    assert case.case_id == "Case_001" and case.naming == naming and case.labels == conv
    assert case.paths == {k: paths[k] for k in C.MODALITIES} and case.seg_path == paths["seg"]
    arr = case.array()
    assert arr.shape == (4, *SIZE_ZYX) and arr.dtype == np.float32
    for i, key in enumerate(C.MODALITIES):  # channel order is MODALITIES order, whatever the file names
        np.testing.assert_array_equal(arr[i], sitk.GetArrayFromImage(_image(i)))
    assert case.reference is case.images["t1ce"]
    assert case.shape_xyz == tuple(reversed(SIZE_ZYX)) and case.spacing == (1.0, 1.0, 1.0)
    other = "2023" if conv == "2021" else "2021"
    assert set(np.unique(case.seg_array()).tolist()) == set(C.label_convention(conv).allowed)
    np.testing.assert_array_equal(case.seg_array(other), C.convert_labels(case.seg_array(), conv, other))


def test_load_case_from_explicit_paths_mixed_formats(tmp_path):
    imgs = {k: io.write_image(_image(i), tmp_path / f"scan{i}{ext}")
            for i, (k, ext) in enumerate(zip(C.MODALITIES, (".nrrd", ".mha", ".nii", ".nii.gz")))}
    case = load_case(imgs, case_id="patient7")
    assert case.case_id == "patient7" and case.naming is None and case.seg is None
    np.testing.assert_array_equal(case.array()[3], sitk.GetArrayFromImage(_image(3)))
    with pytest.raises(BraTSInputError, match="missing flair"):
        load_case({k: v for k, v in imgs.items() if k != "flair"})


def test_missing_modality_names_expected_file(tmp_path):
    paths = write_case(tmp_path)
    paths["t2"].unlink()
    with pytest.raises(BraTSInputError, match=r"missing T2 \(expected Case_001_t2\.nii\.gz\)"):
        load_case(tmp_path)


def test_unreadable_modality_is_named(tmp_path):
    paths = write_case(tmp_path)
    paths["flair"].write_bytes(b"\x00garbage")
    with pytest.raises(BraTSInputError, match=r"Case_001_flair\.nii\.gz: cannot be read as an image"):
        load_case(tmp_path)


def _respace(img):
    img.SetSpacing((1.0, 1.0, 3.0))
    return img


def _shift(img):
    img.SetOrigin((0.0, -230.0, 0.0))
    return img


def _rotate(img):
    img.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return img


def _resize(img):
    return _image(2, size_zyx=(8, 10, 11))


@pytest.mark.parametrize("change,expected", [
    (_respace, r"Case_001_flair\.nii\.gz: flair spacing \(1\.0, 1\.0, 3\.0\) differs from t1ce \(1\.0, 1\.0, 1\.0\)"),
    (_shift, r"Case_001_flair\.nii\.gz: flair origin \(0\.0, -230\.0, 0\.0\) differs from t1ce \(0\.0, -239\.0, 0\.0\)"),
    (_rotate, r"Case_001_flair\.nii\.gz: flair direction \(0\.0, 1\.0, 0\.0, 1\.0, .*\) differs from t1ce \(1\.0, 0\.0"),
    (_resize, r"Case_001_flair\.nii\.gz: flair size \(11, 10, 8\) differs from t1ce \(12, 10, 8\)"),
])
def test_mismatched_geometry_is_named(tmp_path, change, expected):
    write_case(tmp_path, change={"flair": change})
    with pytest.raises(BraTSInputError, match=expected):
        load_case(tmp_path)


def test_every_geometry_problem_is_reported_in_one_line(tmp_path):
    write_case(tmp_path, change={"flair": _respace, "t1": _shift})
    with pytest.raises(BraTSInputError) as err:
        load_case(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "Case_001_t1.nii.gz: t1 origin" in msg and "Case_001_flair.nii.gz: flair spacing" in msg


def test_geometry_within_tolerance_is_accepted(tmp_path):
    write_case(tmp_path, change={"t2": lambda im: (im.SetSpacing((1.0, 1.0, 1.0004)), im)[1]})
    assert load_case(tmp_path).shape_xyz == (12, 10, 8)
    with pytest.raises(BraTSInputError, match="t2 spacing"):
        load_case(tmp_path, atol=1e-5)


def test_nan_voxels_are_named(tmp_path):
    def add_nan(img):
        arr = sitk.GetArrayFromImage(img)
        arr[0, 0, 0] = np.nan
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        return out

    write_case(tmp_path, change={"t2": add_nan})
    with pytest.raises(BraTSInputError, match=r"Case_001_t2\.nii\.gz: 1 voxels are NaN or infinite"):
        load_case(tmp_path)


def test_bad_label_values(tmp_path):
    ref = _image(0)
    write_case(tmp_path, change={"seg": lambda img: io.label_image(_seg(ref, (0, 1, 2, 3)), ref)})
    with pytest.raises(BraTSInputError, match=r"Case_001_seg\.nii\.gz: label values \[3\] are not in the BraTS 2021"):
        load_case(tmp_path)
    case = load_case(tmp_path, seg_convention="2023")  # the user says which convention the file uses
    assert case.labels == "2023" and 4 in case.seg_array("2021")
    with pytest.raises(BraTSInputError, match="unknown label convention"):
        load_case(tmp_path, seg_convention="1999")


def test_require_seg(tmp_path):
    write_case(tmp_path, seg=False)
    assert load_case(tmp_path).seg is None
    with pytest.raises(BraTSInputError, match=r"no segmentation file \(expected e\.g\. Case_001_seg\.nii\.gz\)"):
        load_case(tmp_path, require_seg=True)
    with pytest.raises(BraTSInputError, match="has no segmentation"):
        load_case(tmp_path).seg_array()


def test_resample_onto_t1ce_grid(tmp_path):
    coarse = sitk.GetImageFromArray(np.full((4, 5, 6), 50.0, np.float32))
    coarse.SetSpacing((2.0, 2.0, 2.0))
    coarse.SetOrigin((0.5, -238.5, 0.5))  # voxel centres of the 2 mm grid cover the 1 mm grid
    ref = _image(0)
    seg_coarse = sitk.GetImageFromArray(np.full((4, 5, 6), 2, np.uint8))
    seg_coarse.CopyInformation(coarse)
    write_case(tmp_path, change={"flair": lambda img: coarse, "seg": lambda img: seg_coarse})
    with pytest.raises(BraTSInputError, match="flair spacing"):
        load_case(tmp_path)
    case = load_case(tmp_path, resample=True)
    for img in (*case.images.values(), case.seg):
        assert io.geometry_differences(img, ref, atol=1e-9) == []
    flair = case.array()[3]
    assert np.allclose(flair[:7, :9, :11], 50.0)  # linear interpolation of a constant inside the coarse grid
    assert case.seg.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(case.seg_array()).tolist()) <= {0, 2}  # nearest neighbour: no new label values
    assert (case.seg_array()[:7, :9, :11] == 2).all()


def test_folder_problems(tmp_path):
    (tmp_path / "README.txt").write_text("notes")
    with pytest.raises(BraTSInputError, match="no BraTS case files"):
        find_case_files(tmp_path)
    write_case(tmp_path)
    io.write_image(_image(0), tmp_path / "Case_001_t1.nrrd")
    with pytest.raises(BraTSInputError, match=r"several t1 files: Case_001_t1\.nii\.gz, Case_001_t1\.nrrd"):
        find_case_files(tmp_path)
    (tmp_path / "Case_001_t1.nrrd").unlink()
    write_case(tmp_path, case_id="Case_002", seg=False)
    with pytest.raises(BraTSInputError, match=r"several cases or namings: Case_001 \(brats2021\), Case_002"):
        load_case(tmp_path)
    with pytest.raises(BraTSInputError, match="not found"):
        find_case_files(tmp_path / "absent")
    with pytest.raises(BraTSInputError, match="expected a case folder"):
        load_case(tmp_path / "Case_001_t1.nii.gz")


def test_find_cases(tmp_path):
    write_case(tmp_path / "a" / "one")
    write_case(tmp_path / "b", naming="brats2023", case_id="BraTS-GLI-00002-000", seg=False)
    (tmp_path / "labels_only").mkdir()
    io.write_label_map(_seg(_image(0)), _image(0), tmp_path / "labels_only" / "x_seg.nii.gz")
    write_case(tmp_path / ".hidden")
    assert find_cases(tmp_path) == [tmp_path / "a" / "one", tmp_path / "b"]


def test_from_images_validates_like_load_case():
    imgs = {k: _image(i) for i, k in enumerate(C.MODALITIES)}
    case = BraTSCase.from_images(imgs, "mem")
    assert case.paths == {} and case.array().shape == (4, *SIZE_ZYX)
    with pytest.raises(BraTSInputError, match="missing t2"):
        BraTSCase.from_images({k: v for k, v in imgs.items() if k != "t2"}, "mem")
    imgs["t1"] = _respace(_image(0))
    with pytest.raises(BraTSInputError, match=r"t1: t1 spacing \(1\.0, 1\.0, 3\.0\) differs from t1ce"):
        BraTSCase.from_images(imgs, "mem")
    assert BraTSCase.from_images(imgs, "mem", resample=True).images["t1"].GetSpacing() == (1.0, 1.0, 1.0)
    imgs["t1"] = sitk.GetImageFromArray(np.ones((10, 12), np.float32))
    with pytest.raises(BraTSInputError, match="t1: is 2D"):
        BraTSCase.from_images(imgs, "mem")


# --- real BraTS data ----------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_brats2023_sample(shared_data):
    case = load_case(shared_data / "brats2023-gli-sample")
    assert case.case_id == "BraTS-GLI-00001-000" and case.naming == "brats2023"
    assert case.paths["t1ce"].name == "BraTS-GLI-00001-000-t1c.nii.gz"
    assert case.paths["flair"].name == "BraTS-GLI-00001-000-t2f.nii.gz"
    assert case.shape_xyz == (240, 240, 155) and case.seg is None
    assert io.orientation_code(case.reference.GetDirection()) == "LPS"


@pytest.mark.shared_data
def test_real_brats2018_case(brats2018_cases):
    folder = brats2018_cases[0]
    case = load_case(folder, require_seg=True)
    assert case.case_id == folder.name and case.naming == "brats2021" and case.labels == "2021"
    arr = case.array()
    assert arr.shape == (4, 155, 240, 240) and np.isfinite(arr).all()
    seg = case.seg_array()
    assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4} and (seg > 0).any()
    assert set(np.unique(case.seg_array("2023")).tolist()) <= {0, 1, 2, 3}
    assert len(find_cases(folder.parent)) == len(brats2018_cases)


def test_from_images_rejects_non_images():
    imgs = {k: _image(i) for i, k in enumerate(C.MODALITIES)}
    with pytest.raises(BraTSInputError, match="seg: expected a SimpleITK image, got ndarray"):
        BraTSCase.from_images(imgs, "mem", seg=np.zeros(SIZE_ZYX, np.uint8))
    seg = io.label_image(_seg(_image(0)), _image(0))
    case = BraTSCase.from_images(imgs, "mem", seg=seg, seg_convention="2021")
    assert case.labels == "2021" and case.seg_array().dtype == np.uint8
