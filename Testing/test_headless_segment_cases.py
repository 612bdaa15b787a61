"""BraTSMamba/Scripts/segment_cases.py run as Slicer would run it, but in plain Python with slicer-core:
a folder of cases in, <case>.seg.nrrd (three overlapping segments) out, broken cases reported, exit status."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow

from BraTSMambaLib.data import conventions as cv  # noqa: E402
from BraTSMambaLib.data.phantom import write_phantom  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "BraTSMamba" / "Scripts" / "segment_cases.py"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from BraTSMambaLib.inference.package import save_package
    from BraTSMambaLib.nets import build_model, get_spec

    overrides = {k: v for k, v in get_spec("mednext_s").tiny.items() if k != "patch_size"}
    torch.manual_seed(3)
    net = build_model("mednext_s", patch_size=(32, 32, 32), **overrides)
    return save_package(tmp_path_factory.mktemp("pkg") / "tiny", "mednext_s", net.state_dict(),
                        patch_size=(32, 32, 32), overrides=overrides, name="tiny-random")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(SCRIPT), "--", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT.parent)


def test_help_explains_and_exits_zero():
    r = _run("--help")
    assert r.returncode == 0 and "--input" in r.stdout and "seg.nrrd" in r.stdout


def test_segments_a_folder_reports_broken_cases_and_resumes(tmp_path, package):
    import slicerio
    import SimpleITK as sitk

    cases = tmp_path / "cases"
    good = write_phantom(cases / "a", seed=1, shape_xyz=(40, 40, 32))
    broken = write_phantom(cases / "b", seed=2, shape_xyz=(40, 40, 32))
    next(broken.glob("*_flair.nii.gz")).unlink()
    out = tmp_path / "out"

    r = _run("--input", str(cases), "--output", str(out), "--model", str(package), "--device", "cpu", "--fast")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "missing FLAIR" in r.stderr and "1 of 2 cases failed" in r.stderr
    case_id = next(good.glob("*_t1ce.nii.gz")).name.replace("_t1ce.nii.gz", "")
    seg_path = out / f"{case_id}.seg.nrrd"
    seg = slicerio.read_segmentation(str(seg_path))
    assert [s["name"] for s in seg["segments"]] == list(cv.REGIONS)
    reference = sitk.ReadImage(str(good / f"{case_id}_t1ce.nii.gz"))
    from BraTSMambaLib.mrml.geometry import image_ijk_to_lps

    assert np.allclose(seg["ijkToLPS"], image_ijk_to_lps(reference), atol=1e-4)
    masks = {r: slicerio.segment_mask(seg, r) for r in cv.REGIONS}
    assert masks["WT"].shape == reference.GetSize()
    report = json.loads((out / f"{case_id}_volumes.json").read_text())
    voxel_ml = np.prod(reference.GetSpacing()) / 1000.0
    for r in cv.REGIONS:
        assert report["volumes_ml"][r] == pytest.approx(masks[r].sum() * voxel_ml, rel=1e-6)
    assert not list(out.glob("*_b*")) and not list(out.glob(".*"))  # nothing for the broken case, no temp files

    broken.rename(tmp_path / "moved-away")
    r = _run("--input", str(cases), "--output", str(out), "--model", str(package), "--device", "cpu")
    assert r.returncode == 0 and "skipped" in r.stdout, r.stdout + r.stderr


def test_bad_input_exits_2(tmp_path):
    r = _run("--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "out"))
    assert r.returncode == 2 and "not a folder" in r.stderr
