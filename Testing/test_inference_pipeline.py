"""Segmentation pipeline mechanics with a randomly initialised tiny SegMamba (no accuracy claims):
geometry round trip (anisotropic, oblique, cropped), overlapping .seg.nrrd read by slicerio, label
conventions, atomic writes, refusal of existing outputs, the segment/demo commands, batch resume."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BraTSMambaLib.cli import main
from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.data.case import BraTSCase, load_case
from BraTSMambaLib.data.phantom import make_phantom, write_phantom
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.inference import outputs as O
from BraTSMambaLib.inference.package import save_package
from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model, segment_batch, segment_case
from BraTSMambaLib.inference.preprocessing import equivalent_plans, preprocess, region_dataset_json, restore
from BraTSMambaLib.nets import build_model, get_spec

PATCH = (32, 32, 32)
SHAPE = (44, 40, 32)  # the phantom brain fits one 32^3 tile: one forward pass per case
OPTS = dict(device="cpu", tta=1, overlap=0.0)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    kw = {k: v for k, v in get_spec("segmamba").tiny.items() if k != "patch_size"}
    torch.manual_seed(0)
    net = build_model("segmamba", patch_size=PATCH, **kw)
    return save_package(tmp_path_factory.mktemp("pkg") / "tiny", "segmamba", [net.state_dict()],
                        patch_size=PATCH, overrides=kw, description="random init, tests only")


@pytest.fixture(scope="module")
def model(package):
    return load_model(package, SegmentOptions(**OPTS))


def write_case(case: BraTSCase, folder: Path, *, direction=None, origin=None, crop=None) -> Path:
    """Write a phantom as 2021-named files, optionally re-oriented or cropped (same change for all files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, img in [*case.images.items(), ("seg", case.seg)]:
        if crop is not None:
            img = img[crop]
        img = sitk.Image(img)
        if direction is not None:
            img.SetDirection(direction)
        if origin is not None:
            img.SetOrigin(origin)
        sitk.WriteImage(img, str(folder / f"{case.case_id}_{key}.nii.gz"))
    return folder


def oblique_direction(deg: float = 20.0) -> tuple[float, ...]:
    a, b = np.deg2rad(deg), np.deg2rad(deg / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx @ np.diag([-1, -1, 1])).ravel())


def same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == pytest.approx(b.GetSpacing(), abs=1e-6)
    assert a.GetOrigin() == pytest.approx(b.GetOrigin(), abs=1e-5)
    assert a.GetDirection() == pytest.approx(b.GetDirection(), abs=1e-6)


# --- preprocessing and its inverse ---------------------------------------------------------------


@pytest.mark.parametrize("spacing_xyz,target", [((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)), ((0.9, 1.1, 2.5), (1.0, 1.0, 1.0))])
def test_restore_inverts_preprocessing(spacing_xyz, target):
    """Truth regions carried to the network grid by nnU-Net's preprocessing and back land where they were."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    case = make_phantom(3, (48, 40, 24) if spacing_xyz[2] > 2 else SHAPE, spacing=spacing_xyz)
    pm = PlansManager(equivalent_plans(tuple(reversed(target)), PATCH))
    cm, dj = pm.get_configuration("3d_fullres"), region_dataset_json()
    truth = case.seg_array("nnunet")
    spacing_zyx = tuple(reversed(case.reference.GetSpacing()))
    data, props = preprocess(case.array(), spacing_zyx, pm, cm, dj)
    assert props["bbox_used_for_cropping"] != [[0, s] for s in truth.shape]  # the phantom has background to crop
    expected = [round(s * a / b) for s, a, b in zip(props["shape_after_cropping_and_before_resampling"], spacing_zyx,
                                                    reversed(target))]
    assert list(data.shape[1:]) == expected
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    _, seg, _ = DefaultPreprocessor(verbose=False).run_case_npy(case.array(), truth[None].astype(np.int16), {"spacing": list(spacing_zyx)},
                                                                pm, cm, dj)
    regions_pre = np.stack([np.isin(seg[0], C.NNUNET_REGIONS[r]) for r in C.REGIONS]).astype(np.float32)
    back = restore(regions_pre, props, pm, cm, dj) > 0.5
    truth_regions = C.labels_to_regions(truth, "nnunet")
    for r, b, t in zip(C.REGIONS, back, truth_regions):
        dice = 2 * np.count_nonzero(b & t) / (np.count_nonzero(b) + np.count_nonzero(t))
        # identical grids: exact; anisotropic: only resampling blur (ET is a thin rim of few voxels here)
        assert dice > (0.999 if spacing_xyz == (1.0, 1.0, 1.0) else 0.9 if r == "WT" else 0.75), (r, dice)


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["anisotropic", "oblique", "cropped"])
def test_outputs_keep_input_geometry(kind, model, tmp_path):
    if kind == "anisotropic":
        case = make_phantom(1, (44, 40, 16), spacing=(1.0, 1.1, 2.0))
        folder = write_case(case, tmp_path / "in", origin=(10.0, -20.0, 33.0))
    elif kind == "oblique":
        case = make_phantom(1, SHAPE)
        folder = write_case(case, tmp_path / "in", direction=oblique_direction(), origin=(-5.0, 7.0, 2.0))
    else:  # field of view cut through the brain: the nonzero crop touches the border
        case = make_phantom(1, SHAPE)
        folder = write_case(case, tmp_path / "in", crop=(slice(8, 44), slice(0, 30), slice(4, 32)))
    ref = sitk.ReadImage(str(next(folder.glob("*_t1ce.nii.gz"))))
    res = segment_case(folder, model, tmp_path / "out", SegmentOptions(**OPTS))
    seg = sitk.ReadImage(str(res.paths["seg"]))
    same_geometry(seg, ref)
    assert seg.GetPixelID() == sitk.sitkUInt8
    labels = sitk.GetArrayFromImage(seg)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    # nothing outside the input's nonzero (brain) box, where nnU-Net's crop removed it
    nonzero = np.any(load_case(folder).array() != 0, axis=0)
    box = tuple(slice(a.min(), a.max() + 1) for a in np.nonzero(nonzero))
    outside = labels.copy()
    outside[box] = 0
    assert not outside.any()
    report = json.loads(res.paths["volumes"].read_text())
    voxel_ml = float(np.prod(ref.GetSpacing())) / 1000
    assert report["regions_ml"]["WT"] == pytest.approx(np.count_nonzero(labels) * voxel_ml, abs=1e-3)
    assert set(report["timings_s"]) >= {"read", "preprocess", "inference", "postprocess", "write", "total"}
    assert report["model"]["network"] == "segmamba" and report["device"].startswith("cpu")


def test_seg_nrrd_has_overlapping_named_segments(model, tmp_path):
    import slicerio

    case = make_phantom(2, SHAPE)
    folder = write_case(case, tmp_path / "in", direction=oblique_direction(), origin=(1.0, 2.0, 3.0))
    res = segment_case(folder, model, tmp_path / "out", SegmentOptions(**OPTS))
    seg = slicerio.read_segmentation(str(res.paths["nrrd"]))
    assert [s["name"] for s in seg["segments"]] == list(C.REGIONS)
    for s in seg["segments"]:
        assert s["color"] == pytest.approx(C.REGION_COLORS[s["name"]], abs=1e-4)
        assert s["terminology"]["type"][1] == C.TERMINOLOGY_TYPE[1]
    ref = case.reference
    expected = O.ijk_to_lps(sitk.ReadImage(str(folder / f"{case.case_id}_t1ce.nii.gz")))
    assert np.allclose(seg["ijkToLPS"], expected, atol=1e-5)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(res.paths["seg"])))
    regions = C.labels_to_regions(labels, "2021")
    assert regions.any(axis=(1, 2, 3)).all(), "random init should predict every region somewhere"
    masks = {s["name"]: slicerio.segment_mask(seg, s) for s in seg["segments"]}
    for r, region in zip(C.REGIONS, regions):
        assert np.array_equal(masks[r].transpose(2, 1, 0), region), r  # (i, j, k) -> (z, y, x)
    overlap = masks["WT"] & masks["TC"]
    assert overlap.any() and np.array_equal(overlap, masks["TC"])  # TC lies inside WT: overlapping segments
    assert ref.GetSize() == tuple(masks["WT"].shape)


def test_seg_nrrd_is_read_by_slicer(model, tmp_path):
    """Slicer's own segmentation storage node (PyPI slicer-core) reads three segments in three layers."""
    slicer = pytest.importorskip("slicer")
    from vtk.util.numpy_support import vtk_to_numpy

    case = make_phantom(2, SHAPE)
    res = segment_case(write_case(case, tmp_path / "in"), model, tmp_path / "out", SegmentOptions(**OPTS))
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(res.paths["nrrd"]))
    assert storage.ReadData(node) == 1
    seg = node.GetSegmentation()
    assert seg.GetNumberOfSegments() == 3 and seg.GetNumberOfLayers() == 3
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(res.paths["seg"])))
    for i, region in enumerate(C.labels_to_regions(labels, "2021")):
        segment = seg.GetNthSegment(i)
        assert segment.GetName() == C.REGIONS[i]
        voxels = vtk_to_numpy(segment.GetRepresentation("Binary labelmap").GetPointData().GetScalars())
        assert int((voxels == segment.GetLabelValue()).sum()) == int(region.sum())


def test_label_conventions_and_probabilities(model, tmp_path):
    case = make_phantom(4, SHAPE)
    folder = write_case(case, tmp_path / "in")
    r21 = segment_case(folder, model, tmp_path / "o21", SegmentOptions(**OPTS, save_probabilities=True))
    r23 = segment_case(folder, model, tmp_path / "o23", SegmentOptions(**OPTS, labels="2023"))
    l21 = sitk.GetArrayFromImage(sitk.ReadImage(str(r21.paths["seg"])))
    l23 = sitk.GetArrayFromImage(sitk.ReadImage(str(r23.paths["seg"])))
    assert set(np.unique(l23)) <= {0, 1, 2, 3} and 4 not in l23
    assert np.array_equal(C.convert_labels(l21, "2021", "2023"), l23)
    prob = sitk.ReadImage(str(r21.paths["probabilities"]))
    assert prob.GetNumberOfComponentsPerPixel() == 3
    p = sitk.GetArrayFromImage(prob)  # (z, y, x, 3)
    assert p.min() >= 0 and p.max() <= 1
    # the label map is nnU-Net's region assembly of the thresholded probabilities
    assert np.array_equal(C.regions_to_labels(np.moveaxis(p, -1, 0) > 0.5, "2021"), l21)


def test_mirror_tta_makes_prediction_flip_equivariant(model):
    """Averaging over a flip group makes the prediction equivariant to those flips (here: axis 0)."""
    from BraTSMambaLib.inference.predictor import SlidingWindowPredictor, mirror_sets

    assert mirror_sets(8) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert mirror_sets(4, axes=(1, 2)) == [(), (1,), (2,), (1, 2)]
    with pytest.raises(BraTSInputError):
        mirror_sets(9)
    pred = SlidingWindowPredictor(model.predictor.networks, PATCH, torch.device("cpu"), overlap=0.0, tta=2,
                                  tiles_per_forward=2)
    x = torch.randn(4, *PATCH, generator=torch.Generator().manual_seed(0))
    y = pred.predict(x)
    assert torch.allclose(torch.flip(pred.predict(torch.flip(x, [1])), [1]), y, atol=1e-5)
    single = SlidingWindowPredictor(model.predictor.networks, PATCH, torch.device("cpu"), overlap=0.0, tta=1)
    assert not torch.allclose(torch.flip(single.predict(torch.flip(x, [1])), [1]), single.predict(x), atol=1e-5)


def test_existing_outputs_refused_and_failed_write_leaves_nothing(model, tmp_path, monkeypatch):
    case = make_phantom(5, SHAPE)
    folder = write_case(case, tmp_path / "in")
    out = tmp_path / "out"
    res = segment_case(folder, model, out, SegmentOptions(**OPTS))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(BraTSInputError, match="already exists"):
        segment_case(folder, model, out, SegmentOptions(**OPTS))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    segment_case(folder, model, out, SegmentOptions(**OPTS, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == sorted(before)

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(O, "write_overlay", disk_full)
    out2 = tmp_path / "out2"
    with pytest.raises(OSError):
        segment_case(folder, model, out2, SegmentOptions(**OPTS, overlay=True))
    assert list(out2.iterdir()) == []  # label map and .seg.nrrd written before the failure were removed
    assert res.paths["seg"].is_file()


def test_no_output_is_in_place_until_all_are_written(model, tmp_path, monkeypatch):
    """A process killed while writing leaves only hidden temporaries: outputs appear together at the end."""
    folder = write_case(make_phantom(5, SHAPE), tmp_path / "in")
    out = tmp_path / "out"
    seen: list[list[str]] = []
    real_overlay = O.write_overlay

    def overlay_then_look(*a, **k):
        path = real_overlay(*a, **k)
        seen.append(sorted(p.name for p in out.iterdir()))
        return path

    monkeypatch.setattr(O, "write_overlay", overlay_then_look)
    res = segment_case(folder, model, out, SegmentOptions(**OPTS, overlay=True))
    assert seen and all(name.startswith(".") for name in seen[0])  # the moment a kill would hit
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in res.paths.values())


def test_segment_command_single_case_four_files_and_evaluate(package, tmp_path, capsys):
    case = make_phantom(6, SHAPE)
    folder = write_phantom(tmp_path / "in", seed=6, shape_xyz=SHAPE)
    files = {m: str(folder / f"{case.case_id}_{m}.nii.gz") for m in C.MODALITIES}
    args = ["segment", "-o", str(tmp_path / "out"), "--model", str(package), "--device", "cpu", "--fast"]
    rc = main([*args, *sum(([f"--{m}", f] for m, f in files.items()), []), "--evaluate"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "without disk I/O" in out and "not evaluated: the case has no label map" in out
    assert (tmp_path / "out" / f"{case.case_id}_seg.nii.gz").is_file()
    args[2] = str(tmp_path / "out_eval")
    assert main([*args, "--case", str(folder), "--evaluate", "--overlay"]) == 0
    assert "Dice WT" in capsys.readouterr().out
    report = json.loads((tmp_path / "out_eval" / f"{case.case_id}_volumes.json").read_text())
    assert set(report["evaluation"]) == set(C.REGIONS) and report["settings"]["tta"] == 1
    assert (tmp_path / "out_eval" / f"{case.case_id}_overlay.png").stat().st_size > 1000
    assert main([*args, "--case", str(folder)]) == 2  # outputs exist -> refused before any work
    assert "already exists" in capsys.readouterr().err
    assert main(["segment", "-o", str(tmp_path / "x"), "--case", str(folder), "--t1", files["t1"]]) == 2


def test_batch_resumes_and_continues_past_broken_case(package, tmp_path, capsys):
    root = tmp_path / "cases"
    ids = []
    for seed in (7, 8, 9):
        write_phantom(root / f"case{seed}", seed=seed, shape_xyz=SHAPE)
        ids.append(f"BraTSPhantom_s{seed}")
    broken = root / "case8" / f"{ids[1]}_flair.nii.gz"
    good_flair = broken.read_bytes()
    broken.write_bytes(b"this is not an image")
    out = tmp_path / "out"
    args = ["segment", "--batch", str(root), "-o", str(out), "--model", str(package), "--device", "cpu",
            "--fast", "--no-progress"]
    assert main(args) == 1
    cap = capsys.readouterr()
    assert f"FAILED {ids[1]}" in cap.err and "2 segmented" in cap.out
    assert sorted(p.name for p in out.glob("*_volumes.json")) == [f"{ids[0]}_volumes.json", f"{ids[2]}_volumes.json"]
    assert not list(out.glob(f"{ids[1]}*")) and not list(out.glob(".*"))
    broken.write_bytes(good_flair)
    mtime = (out / f"{ids[0]}_seg.nii.gz").stat().st_mtime_ns
    assert main([*args, "--progress-json"]) == 0
    stdout = capsys.readouterr().out
    assert "1 segmented, 2 already complete, 0 failed" in stdout
    assert (out / f"{ids[0]}_seg.nii.gz").stat().st_mtime_ns == mtime
    # progress per case, inside each case's share of the bar, ending at 1.0
    from BraTSMambaLib.progress import parse_progress

    reported = [p for p in map(parse_progress, stdout.splitlines()) if p is not None]
    fractions = [p.fraction for p in reported]
    assert fractions == sorted(fractions) and reported[-1].stage == "done" and fractions[-1] == 1.0
    ends = [p.message for p in reported if p.stage == "write" and not p.message.endswith("files")]
    assert ends == [f"case 1/3 {ids[0]}: skipped, outputs complete", f"case 2/3 {ids[1]}: segmented",
                    f"case 3/3 {ids[2]}: skipped, outputs complete"]
    assert {p.stage for p in reported if p.message.startswith(f"case 2/3 {ids[1]}")} == {
        "load", "preprocess", "inference", "postprocess", "write"}


def test_batch_split_across_torchrun_ranks(model, tmp_path, monkeypatch):
    root = tmp_path / "cases"
    for seed in (10, 11, 12):
        write_phantom(root / f"c{seed}", seed=seed, shape_xyz=SHAPE)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = segment_batch(root, model, tmp_path / "out", SegmentOptions(**OPTS), progress=False)
    assert res.done == ["BraTSPhantom_s11"] and not res.failed


def test_batch_pipeline_writes_what_the_sequential_batch_writes_and_survives_a_failed_write(model, tmp_path):
    """Reading ahead and writing behind change nothing in the outputs; a case whose write fails (its
    label-map path is taken by a folder) fails alone, leaves no temporary files, and the next case is written."""
    import SimpleITK as sitk

    root = tmp_path / "cases"
    ids = [f"BraTSPhantom_s{seed}" for seed in (20, 21, 22)]
    for seed in (20, 21, 22):
        write_phantom(root / f"c{seed}", seed=seed, shape_xyz=SHAPE)
    runs = {}
    for pipeline in (False, True):
        out = tmp_path / f"out_{pipeline}"
        res = segment_batch(root, model, out, SegmentOptions(**OPTS), progress=False, pipeline=pipeline)
        assert res.done == ids and not res.failed
        runs[pipeline] = {i: sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{i}_seg.nii.gz"))) for i in ids}
    assert all(np.array_equal(runs[True][i], runs[False][i]) for i in ids)

    out = tmp_path / "out_blocked"
    (out / f"{ids[1]}_seg.nii.gz" / "taken").mkdir(parents=True)
    res = segment_batch(root, model, out, SegmentOptions(**OPTS, overwrite=True), progress=False)
    assert res.done == [ids[0], ids[2]] and list(res.failed) == [ids[1]]
    assert not (out / f"{ids[1]}_volumes.json").exists() and not list(out.glob(".*"))
    assert (out / f"{ids[2]}_volumes.json").is_file()


def test_demo_refuses_without_bundled_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BRATSMAMBA_RESOURCES", str(tmp_path / "res"))
    assert main(["demo", "-o", str(tmp_path / "out")]) == 1
    assert "demo model package is not bundled" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_runs_bundled_package(package, tmp_path, monkeypatch, capsys):
    """Mechanics only: a random-init package stands in for the trained demo model."""
    import shutil

    res = tmp_path / "res"
    shutil.copytree(package, res / "Models" / "demo")
    monkeypatch.setenv("BRATSMAMBA_RESOURCES", str(res))
    assert main(["demo", "-o", str(tmp_path / "out"), "--device", "cpu", "--shape", *map(str, SHAPE)]) == 0
    out = capsys.readouterr().out
    assert "Dice WT" in out and "BraTSPhantom_s0" in out
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"BraTSPhantom_s0_seg.nii.gz", "BraTSPhantom_s0.seg.nrrd", "BraTSPhantom_s0_volumes.json",
            "BraTSPhantom_s0_overlay.png", "phantom-case"} <= names


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_case_cpu_fast(model, brats2018_cases, tmp_path):
    """A real 240x240x155 BraTS case goes through the whole pipeline on the CPU with the real geometry."""
    res = segment_case(brats2018_cases[0], model, tmp_path, SegmentOptions(**OPTS, evaluate=True))
    ref = load_case(brats2018_cases[0]).reference
    same_geometry(sitk.ReadImage(str(res.paths["seg"])), ref)
    assert set(res.report["evaluation"]) == set(C.REGIONS)
    assert os.path.getsize(res.paths["nrrd"]) > 0


@pytest.mark.gpu
def test_cuda_bf16_matches_cpu_fp32(package, tmp_path):
    """The CUDA path (bf16 autocast, batched tiles x flips) agrees with the CPU fp32 path."""
    case = make_phantom(13, SHAPE)
    from BraTSMambaLib.inference.pipeline import predict_case

    cpu = load_model(package, SegmentOptions(device="cpu", tta=8, overlap=0.5))
    gpu = load_model(package, SegmentOptions(device="cuda", tta=8, overlap=0.5))
    assert gpu.predictor.dtype in (torch.bfloat16, torch.float16) and gpu.predictor.sw_batch_size == 1
    p_cpu, _ = predict_case(case, cpu, SegmentOptions(device="cpu"))
    p_gpu, _ = predict_case(case, gpu, SegmentOptions(device="cuda"))
    assert np.abs(p_cpu - p_gpu).max() < 0.05
    assert (np.mean((p_cpu > 0.5) == (p_gpu > 0.5))) > 0.99
