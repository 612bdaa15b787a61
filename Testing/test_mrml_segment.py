"""Segmenting through MRML nodes with a real (tiny, randomly initialised) model package: the node path,
the NIfTI path and the background CLI job give the same WT/TC/ET voxels; cancel and failure leave the
scene untouched. Mechanics only: accuracy needs trained weights."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow

from BraTSMambaLib import mrml  # noqa: E402
from BraTSMambaLib.data import conventions as cv  # noqa: E402
from BraTSMambaLib.data.io import write_image  # noqa: E402
from BraTSMambaLib.data.phantom import make_phantom  # noqa: E402
from BraTSMambaLib.errors import BraTSInputError  # noqa: E402
from BraTSMambaLib.mrml.job import SegmentJob  # noqa: E402

TINY_NET = "mednext_s"
TINY_PATCH = (32, 32, 32)


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory):
    """A real model package around a randomly initialised tiny registry network (fast on CPU)."""
    from BraTSMambaLib.inference.package import save_package
    from BraTSMambaLib.nets import build_model, get_spec

    overrides = {k: v for k, v in get_spec(TINY_NET).tiny.items() if k != "patch_size"}
    torch.manual_seed(7)
    net = build_model(TINY_NET, patch_size=TINY_PATCH, **overrides)
    return save_package(tmp_path_factory.mktemp("pkg") / "tiny", TINY_NET, net.state_dict(), patch_size=TINY_PATCH,
                        overrides=overrides, name="tiny-random", description="random init, mechanics tests only")


@pytest.fixture(scope="session")
def tiny_model(tiny_package):
    from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model

    return load_model(str(tiny_package), SegmentOptions(device="cpu", fast=True))


def _rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    return np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])


def _write_case(images: dict, folder, case_id: str, naming: str = "brats2021") -> dict:
    names = cv.NAMINGS[naming]
    return {m: write_image(images[m], folder / names.filename(case_id, m)) for m in cv.MODALITIES}


@pytest.fixture(scope="session")
def oblique_phantom(tmp_path_factory):
    """Phantom case on an oblique, anisotropic grid, written as NIfTI files."""
    case = make_phantom(seed=5, shape_xyz=(40, 44, 36), spacing=(1.2, 1.1, 1.5))
    direction = tuple(_rotation(0.25, 0.6).ravel())
    images = {}
    for m, img in case.images.items():
        img = sitk.Image(img)
        img.SetDirection(direction)
        img.SetOrigin((12.0, -30.0, 7.5))
        images[m] = img
    folder = tmp_path_factory.mktemp("phantom")
    return _write_case(images, folder, case.case_id)


def _crop(path, index, size) -> sitk.Image:
    return sitk.RegionOfInterest(sitk.ReadImage(str(path)), size, index)


@pytest.fixture(scope="session")
def real_cases(shared_data, tmp_path_factory, oblique_phantom):
    """Real BraTS 2018 and 2023 cases cropped to 48^3 around the tumour (geometry kept), plus the phantom."""
    out = {"phantom-oblique": oblique_phantom}
    b18 = sorted(p for p in (shared_data / "brats2018").iterdir() if p.is_dir())[0]
    images = {m: _crop(b18 / f"{b18.name}_{m}.nii.gz", (90, 100, 60), (48, 48, 40)) for m in cv.MODALITIES}
    out["brats2018"] = _write_case(images, tmp_path_factory.mktemp("b18"), b18.name)
    s23 = shared_data / "brats2023-gli-sample"
    suffix = cv.NAMINGS["brats2023"].suffixes
    images = {m: _crop(s23 / f"BraTS-GLI-00001-000-{suffix[m]}.nii.gz", (130, 90, 60), (48, 48, 40))
              for m in cv.MODALITIES}
    out["brats2023"] = _write_case(images, tmp_path_factory.mktemp("b23"), "BraTS-GLI-00001-000", "brats2023")
    return out


@pytest.mark.shared_data
@pytest.mark.parametrize("which", ["phantom-oblique", "brats2018", "brats2023"])
def test_node_path_equals_nifti_path(which, real_cases, tiny_model, tmp_path):
    """Files -> Slicer volume nodes -> segmentation gives the voxels and volumes of the library's NIfTI pipeline."""
    from BraTSMambaLib.inference.pipeline import SegmentOptions, segment_case

    files = real_cases[which]
    result = segment_case(dict(files), tiny_model, tmp_path, SegmentOptions(device="cpu", fast=True))

    scene = mrml.new_scene()
    nodes = {m: mrml.load_volume(scene, files[m]) for m in cv.MODALITIES}
    seg = mrml.segment_volume_nodes(scene, nodes, model=tiny_model, device="cpu", fast=True)
    s = seg.GetSegmentation()
    assert [s.GetNthSegment(i).GetName() for i in range(3)] == list(cv.REGIONS) and s.GetNumberOfLayers() == 3
    masks = mrml.segment_masks(seg, nodes["t1ce"])
    for i, r in enumerate(cv.REGIONS):
        assert np.array_equal(masks[r], result.regions[i].astype(bool)), r
    assert masks["WT"].any() and (masks["TC"] & masks["WT"]).any()  # overlapping segments
    volumes = mrml.segment_volumes_ml(seg)
    for r in cv.REGIONS:
        assert volumes[r] == pytest.approx(result.report["regions_ml"][r], abs=1e-3)
    # the CLI's .seg.nrrd loads onto the node's grid with the same voxels
    again = mrml.segmentation_from_files(scene, result.paths["nrrd"], nodes["t1ce"], "from file")
    assert all(np.array_equal(mrml.segment_masks(again, nodes["t1ce"])[r], masks[r]) for r in cv.REGIONS)


def test_default_model_refused_without_bundled_demo(oblique_phantom, tmp_path, monkeypatch):
    """model=None means the bundled demo; without it the scene stays untouched (with it: test_demo_model.py)."""
    monkeypatch.setenv("BRATSMAMBA_RESOURCES", str(tmp_path / "no-resources"))
    scene = mrml.new_scene()
    nodes = {m: mrml.load_volume(scene, p) for m, p in oblique_phantom.items()}
    with pytest.raises(BraTSInputError, match="demo"):
        mrml.segment_volume_nodes(scene, nodes, model=None, device="cpu", fast=True)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def _node_count(scene) -> int:
    return scene.GetNumberOfNodes()


def test_background_job_loads_results_in_one_step(oblique_phantom, tiny_package, tiny_model):
    """The Slicer module's path: the CLI in a child process, results loaded only after it succeeded."""
    scene = mrml.new_scene()
    nodes = {m: mrml.load_volume(scene, p) for m, p in oblique_phantom.items()}
    expected = mrml.segment_masks(
        mrml.segment_volume_nodes(scene, nodes, model=tiny_model, device="cpu", fast=True), nodes["t1ce"])
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "to replace")
    job = SegmentJob(scene, nodes, model=str(tiny_package), device="cpu", fast=True, target=target, labelmap=True)
    job.start()
    workdir = job.workdir
    assert job.process.running or job.process.finished
    assert job.wait(timeout=240), job.error
    assert job.segmentation is target and job.table.GetNumberOfRows() == 3
    got = mrml.segment_masks(target, nodes["t1ce"])
    assert all(np.array_equal(got[r], expected[r]) for r in cv.REGIONS)
    labels = slicer.util.arrayFromVolume(job.labelmap_node)
    assert np.array_equal(labels, cv.regions_to_labels(np.stack([expected[r] for r in cv.REGIONS]), "2021"))
    assert not workdir.exists()  # temporary files removed
    assert any("model" in line for line in job.process.lines)  # the CLI's log was collected
    assert job.progress.stage == "done" and job.progress.fraction == 1.0
    # a second run into the same segmentation replaces its table and label map instead of adding more
    count = scene.GetNumberOfNodes()
    again = SegmentJob(scene, nodes, model=str(tiny_package), device="cpu", fast=True, target=target, labelmap=True)
    again.start()
    assert again.wait(timeout=240), again.error
    assert scene.GetNumberOfNodes() == count and again.table is job.table and again.labelmap_node is job.labelmap_node


def test_job_progress_follows_the_cli_json_lines(oblique_phantom, tiny_package):
    """The CLI (BRATSMAMBA_PROGRESS=json, set by the job) reports every stage in order with
    non-decreasing fractions ending at 1.0, and the job's bar moves through the tiles."""
    import shutil
    import time

    from BraTSMambaLib.progress import PROGRESS_PREFIX, STAGES, parse_progress

    scene = mrml.new_scene()
    nodes = {m: mrml.load_volume(scene, p) for m, p in oblique_phantom.items()}
    job = SegmentJob(scene, nodes, model=str(tiny_package), device="cpu", fast=True, keep_files=True)
    job.start()
    try:
        seen = []
        while not job.poll():
            seen.append(job.progress.fraction)
            time.sleep(0.01)
        assert job.error is None, job.error
        log = (job.workdir / "process.log").read_text().splitlines()
    finally:
        shutil.rmtree(job.workdir, ignore_errors=True)
    reported = [parse_progress(ln) for ln in log if PROGRESS_PREFIX in ln]
    stages = [p.stage for p in reported]
    assert [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]] == [s for s in STAGES if s != "start"]
    fractions = [p.fraction for p in reported]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    tiles = [p for p in reported if p.stage == "inference" and p.message.startswith("tile ")]
    assert len(tiles) >= 2 and tiles[-1].message.split()[1].split("/")[0] == tiles[-1].message.split("/")[1]
    assert all(0.25 < p.fraction <= 0.85 for p in tiles)
    assert not any(PROGRESS_PREFIX in ln for ln in job.process.lines)  # kept out of the log shown to users
    assert seen == sorted(seen) and any(0.25 < f < 0.85 for f in seen)  # the bar moved during inference
    assert job.progress.stage == "done" and job.progress.fraction == 1.0


def test_failed_job_shows_the_log_and_changes_nothing(oblique_phantom, tmp_path):
    scene = mrml.new_scene()
    nodes = {m: mrml.load_volume(scene, p) for m, p in oblique_phantom.items()}
    before = _node_count(scene)
    job = SegmentJob(scene, nodes, model=str(tmp_path / "no-such-package"), device="cpu", fast=True)
    job.start()
    assert not job.wait(timeout=120)
    assert "exit status 2" in job.error and "no-such-package" in job.error
    assert _node_count(scene) == before and job.segmentation is None
    assert not job.cancelled  # the widget shows the error, not "Cancelled"


def test_cancel_kills_the_cli_and_changes_nothing(oblique_phantom, tiny_package):
    import time

    scene = mrml.new_scene()
    nodes = {m: mrml.load_volume(scene, p) for m, p in oblique_phantom.items()}
    before = _node_count(scene)
    job = SegmentJob(scene, nodes, model=str(tiny_package), device="cpu", fast=True)
    job.start()
    time.sleep(1.0)
    pid = job.process.pid
    job.cancel()
    assert job.done and job.cancelled and job.error == "Cancelled." and job.segmentation is None
    assert _node_count(scene) == before and not job.workdir.exists()
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


def test_abort_stops_the_cli_and_records_the_reason(oblique_phantom, tiny_package):
    """What the widget does when polling itself raised: kill, record the reason, clean up, not 'cancelled'."""
    import os

    scene = mrml.new_scene()
    nodes = {m: mrml.load_volume(scene, p) for m, p in oblique_phantom.items()}
    before = _node_count(scene)
    job = SegmentJob(scene, nodes, model=str(tiny_package), device="cpu", fast=True)
    job.start()
    pid = job.process.pid
    job.abort("Segmentation failed: poll raised")
    assert job.done and not job.cancelled and job.error == "Segmentation failed: poll raised"
    assert job.poll() and _node_count(scene) == before and not job.workdir.exists()
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


def test_invalid_inputs_are_refused_before_a_process_starts(oblique_phantom):
    scene = mrml.new_scene()
    nodes = {m: mrml.load_volume(scene, p) for m, p in oblique_phantom.items()}
    nodes["flair"].SetSpacing(2.0, 2.0, 2.0)
    job = SegmentJob(scene, nodes, device="cpu")
    with pytest.raises(BraTSInputError, match="FLAIR.*spacing"):
        job.start()
    assert job.process is None and job.workdir is None
