"""import-nnunet on a real-format nnU-Net v2 results folder: plans.json and dataset.json written by
nnU-Net's own planner for a tiny phantom dataset, checkpoints in nnU-Net's checkpoint layout holding the
state dicts of real (randomly initialised) registry networks built the way our trainers build them."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BraTSMambaLib.cli import main
from BraTSMambaLib.errors import ModelPackageError
from BraTSMambaLib.inference.catalogue import resolve_model
from BraTSMambaLib.inference.nnunet_import import import_nnunet, registry_name_for_trainer
from BraTSMambaLib.inference.package import open_package
from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model, segment_case
from BraTSMambaLib.nets import build_model, get_spec, set_deep_supervision

SHAPE = (44, 40, 32)
pytestmark = pytest.mark.slow  # runs nnU-Net's planner in a subprocess (~30-60 s on 2 cores)

_PLAN = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    root = Path(sys.argv[1])
    os.environ.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
                      nnUNet_results=str(root / "res"))
    if __name__ == "__main__":
        import SimpleITK as sitk
        from BraTSMambaLib.data import conventions as C
        from BraTSMambaLib.data.phantom import make_phantom
        from BraTSMambaLib.inference.preprocessing import region_dataset_json
        ds = root / "raw" / "Dataset991_TinyBraTS"
        (ds / "imagesTr").mkdir(parents=True); (ds / "labelsTr").mkdir()
        for s in range(2):
            case = make_phantom(s, %r)
            for i, m in enumerate(C.MODALITIES):
                sitk.WriteImage(case.images[m], str(ds / "imagesTr" / f"tiny_{s:03d}_{i:04d}.nii.gz"))
            lab = sitk.GetImageFromArray(C.convert_labels(sitk.GetArrayFromImage(case.seg), "2021", "nnunet"))
            lab.CopyInformation(case.seg)
            sitk.WriteImage(lab, str(ds / "labelsTr" / f"tiny_{s:03d}.nii.gz"))
        dj = dict(region_dataset_json(), numTraining=2)
        (ds / "dataset.json").write_text(json.dumps(dj))
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
        extract_fingerprints([991], num_processes=1, check_dataset_integrity=False, clean=True, verbose=False)
        plan_experiments([991])
""") % (SHAPE,)


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[dict, dict]:
    """(plans, dataset_json) as nnU-Net's ExperimentPlanner writes them for a tiny phantom dataset."""
    root = tmp_path_factory.mktemp("nnunet")
    script = root / "plan.py"
    script.write_text(_PLAN)
    subprocess.run([sys.executable, str(script), str(root)], check=True, capture_output=True, timeout=600)
    pre = root / "pre" / "Dataset991_TinyBraTS"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    # the patch size the networks need (as our planning step sets it); the rest is nnU-Net's plan
    plans["configurations"]["3d_fullres"]["patch_size"] = [32, 32, 32]
    return plans, json.loads((pre / "dataset.json").read_text())


def nnunet_checkpoint(net: torch.nn.Module, trainer: str, plans: dict, dataset_json: dict) -> dict:
    """What nnUNetTrainer.save_checkpoint writes (numpy scalars in the log included)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    return {
        "network_weights": net.state_dict(),
        "optimizer_state": opt.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.1), np.float64(0.2)], "ema_fg_dice": [np.float64(0.15)],
                    "train_losses": [0.9, 0.8], "epoch_start_timestamps": [1.0, 2.0]},
        "_best_ema": np.float64(0.15),
        "current_epoch": 2,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset_json,
                      "device": torch.device("cpu")},
        "trainer_name": trainer,
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def results_folder(root: Path, trainer: str, plans: dict, dataset_json: dict, nets: list) -> Path:
    folder = root / "Dataset991_TinyBraTS" / f"{trainer}__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    for i, net in enumerate(nets):
        (folder / f"fold_{i}").mkdir()
        torch.save(nnunet_checkpoint(net, trainer, plans, dataset_json), folder / f"fold_{i}" / "checkpoint_final.pth")
    return folder


def umamba_from_plans(plans: dict, seed: int) -> torch.nn.Module:
    """UMambaBot built as nnUNetTrainerUMambaBot builds it: layout from the plans, deep supervision on."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration("3d_fullres")
    torch.manual_seed(seed)
    return build_model("umambabot", patch_size=cm.patch_size, deep_supervision=True, plans=cm)


def test_trainer_names_map_to_registry():
    assert registry_name_for_trainer("nnUNetTrainerSegMamba") == "segmamba"
    assert registry_name_for_trainer("nnUNetTrainerUMambaBot") == "umambabot"
    assert registry_name_for_trainer("nnUNetTrainerUMambaEnc") == "umambaenc"
    assert registry_name_for_trainer("nnUNetTrainerMedNeXt_S") == "mednext_s"
    with pytest.raises(ModelPackageError, match="trains no network of the registry"):
        registry_name_for_trainer("nnUNetTrainer")
    with pytest.raises(ModelPackageError):
        registry_name_for_trainer("MyTrainer")


def test_umamba_folds_become_an_ensemble_and_segment(planned, tmp_path, monkeypatch, capsys):
    plans, dataset_json = planned
    assert plans["plans_name"] == "nnUNetPlans" and "architecture" in plans["configurations"]["3d_fullres"]
    nets = [umamba_from_plans(plans, seed) for seed in (0, 1)]
    folder = results_folder(tmp_path, "nnUNetTrainerUMambaBot", plans, dataset_json, nets)
    out = tmp_path / "pkg"
    assert main(["import-nnunet", str(folder), "-o", str(out)]) == 0
    assert "umambabot, 2 folds" in capsys.readouterr().out
    pkg = open_package(out)
    assert pkg.network["from_plans"] and pkg.nnunet_plans.name == "plans.json"
    assert json.loads(pkg.nnunet_plans.read_text()) == plans  # nnU-Net's own plans travel with the package
    assert pkg.meta["training"]["trainer"] == "nnUNetTrainerUMambaBot" and pkg.meta["training"]["epochs"] == [2, 2]
    loaded = pkg.build_networks()
    for net, ref in zip(loaded, nets):
        assert all(torch.equal(net.state_dict()[k], v) for k, v in ref.state_dict().items())
    # the package segments a case; the results folder itself is accepted by --model too (imported once)
    from BraTSMambaLib.data.phantom import write_phantom

    case = write_phantom(tmp_path / "case", seed=5, shape_xyz=SHAPE)
    model = load_model(pkg, SegmentOptions(device="cpu", tta=1, overlap=0.0))
    res = segment_case(case, model, tmp_path / "seg", SegmentOptions(device="cpu"))
    ref = sitk.ReadImage(str(case / "BraTSPhantom_s5_t1ce.nii.gz"))
    assert sitk.ReadImage(str(res.paths["seg"])).GetSize() == ref.GetSize()
    assert res.report["model"]["folds"] == 2
    monkeypatch.setenv("BRATSMAMBA_CACHE", str(tmp_path / "cache"))
    direct = resolve_model(str(folder))
    assert direct.network_name == "umambabot" and str(direct.root).startswith(str(tmp_path / "cache"))
    assert resolve_model(str(folder)).root == direct.root  # cached


def test_segmamba_with_plan_overrides_and_wrong_architecture(planned, tmp_path):
    plans, dataset_json = planned
    plans = json.loads(json.dumps(plans))
    tiny = {k: list(v) if isinstance(v, tuple) else v for k, v in get_spec("segmamba").tiny.items()
            if k != "patch_size"}
    plans["configurations"]["3d_fullres"]["network_overrides"] = tiny  # how our trainers store compact variants
    torch.manual_seed(0)
    seg = build_model("segmamba", patch_size=(32, 32, 32), deep_supervision=True, **tiny)
    folder = results_folder(tmp_path / "a", "nnUNetTrainerSegMamba", plans, dataset_json, [seg])
    pkg = open_package(import_nnunet(folder, tmp_path / "seg.zip"))
    assert pkg.network_name == "segmamba" and pkg.network["overrides"]["hidden_size"] == tiny["hidden_size"]
    net = pkg.build_networks()[0]
    set_deep_supervision(seg, False)
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(net(x), seg.eval()(x), atol=1e-5)
    # U-Mamba weights in a folder whose trainer says SegMamba: refused, nothing written
    wrong = results_folder(tmp_path / "b", "nnUNetTrainerSegMamba", plans, dataset_json, [umamba_from_plans(plans, 0)])
    with pytest.raises(ModelPackageError, match="weights do not fit segmamba: .*missing keys"):
        import_nnunet(wrong, tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()


def test_not_a_results_folder(tmp_path, planned):
    plans, dataset_json = planned
    bad = tmp_path / "plain_folder"
    bad.mkdir()
    with pytest.raises(ModelPackageError, match="Trainer>__<Plans>__<Configuration"):
        import_nnunet(bad, tmp_path / "x")
    folder = results_folder(tmp_path, "nnUNetTrainerUMambaBot", plans, dict(dataset_json, labels={"background": 0,
                                                                                                    "tumour": 1}), [])
    with pytest.raises(ModelPackageError, match="not the BraTS region training"):
        import_nnunet(folder, tmp_path / "x")
