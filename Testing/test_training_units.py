"""Fast checks of the training pieces that need no training run: trainer discovery through
nnUNet_extTrainer, trainer names vs the registry, status files, the transfer bundle, settings."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from BraTSMambaLib.data import conventions as C


def test_stock_nnunet_finds_every_trainer_through_ext_trainer():
    """What `nnUNetv2_train ... -tr nnUNetTrainerX` does to find a trainer, in a fresh process."""
    from BraTSMambaLib.training.trainers import TRAINER_DIR
    from BraTSMambaLib.training.trainers.nnunet_trainers import TRAINERS

    names = sorted(cls.__name__ for cls in TRAINERS.values())
    code = ("import sys\nfrom nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
            "for n in sys.argv[1:]:\n    c = f(n)\n    assert issubclass(c, nnUNetTrainer) and c.__name__ == n\n"
            "    print(n, c.MODEL)\n")
    env = dict(os.environ, nnUNet_extTrainer=TRAINER_DIR)
    res = subprocess.run([sys.executable, "-c", code, *names], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    found = dict(line.split() for line in res.stdout.splitlines() if line.startswith("nnUNetTrainer"))
    assert sorted(found) == names
    env.pop("nnUNet_extTrainer")
    res = subprocess.run([sys.executable, "-c", code, "nnUNetTrainerSegMamba"], env=env, capture_output=True, text=True)
    assert res.returncode != 0 and "nnUNet_extTrainer" in res.stderr


def test_trainer_names_map_back_to_registry_models():
    """import-nnunet recovers the network from the trainer class name."""
    from BraTSMambaLib import nets
    from BraTSMambaLib.inference.nnunet_import import registry_name_for_trainer
    from BraTSMambaLib.training.trainers.nnunet_trainers import TRAINERS

    assert set(TRAINERS) == set(nets.list_models())
    for model, cls in TRAINERS.items():
        assert registry_name_for_trainer(cls.__name__) == model
        assert cls.build_network_architecture is not TRAINERS["segmamba"].build_network_architecture or \
            model == "segmamba"
    assert TRAINERS["umambabot"].DEFAULT_LR == 1e-3 and TRAINERS["umambabot"].DEFAULT_ADAM_EPS == 1e-4


def test_settings_travel_as_environment():
    from BraTSMambaLib.training.run import TrainSettings, trainer_environment
    from BraTSMambaLib.training.trainers import TRAINER_DIR

    env = trainer_environment(TrainSettings(epochs=400, iters=250, adam_eps=1e-4, deep_supervision=False,
                                            time_budget_s=3600.0), da_processes=0)
    assert env["BRATSMAMBA_EPOCHS"] == "400" and env["BRATSMAMBA_ITERS"] == "250"
    assert env["BRATSMAMBA_DEEP_SUPERVISION"] == "0" and env["BRATSMAMBA_TIME_BUDGET_S"] == "3600.0"
    assert env["nnUNet_extTrainer"].split(os.pathsep)[0] == TRAINER_DIR and env["nnUNet_compile"] == "f"
    assert env["nnUNet_n_proc_DA"] == "0" and "BRATSMAMBA_LR" not in env


def test_status_keeps_last_line_per_epoch_and_skips_torn_lines(tmp_path):
    from BraTSMambaLib.training.status import append_status, format_table, plot_progress, read_status

    for epoch, loss in ((0, 0.9), (1, 0.7), (1, 0.6), (2, 0.5)):  # epoch 1 written twice (resumed run)
        append_status(tmp_path, {"epoch": epoch, "train_loss": loss, "val_loss": float("nan"), "dice_WT": 0.5,
                                 "dice_TC": None, "dice_ET": 0.1, "epoch_s": 2.0, "lr": 1e-3})
    with open(tmp_path / "status.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')  # killed while writing
    recs = read_status(tmp_path)
    assert [r["epoch"] for r in recs] == [0, 1, 2]
    assert recs[1]["train_loss"] == 0.6 and recs[0]["val_loss"] is None  # NaN stored as null
    table = format_table(recs)
    assert table.splitlines()[0].split()[:3] == ["epoch", "train", "val"] and len(table.splitlines()) == 4
    png = plot_progress(recs, tmp_path / "progress.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bundle_round_trip_is_lossless_inside_the_crop(tmp_path):
    from BraTSMambaLib.data.phantom import write_phantom
    from BraTSMambaLib.training import bundle
    from BraTSMambaLib.training.convert import convert_dataset

    for s in range(2):
        write_phantom(tmp_path / "cases" / f"c{s}", seed=s, shape_xyz=(40, 44, 36))
    res = convert_dataset(tmp_path / "cases", tmp_path / "raw", 991, "Bundle", jobs=1, progress=False)
    parts = bundle.pack(res.dataset_dir, tmp_path / "bundle", part_mb=0.01, jobs=1)
    assert len(parts) == 2  # one case per part at this limit
    out = tmp_path / "raw2" / res.dataset_name
    assert bundle.unpack(parts, out, jobs=1) == sorted(res.converted)
    for case in res.converted:
        for name in [f"imagesTr/{case}_{i:04d}.nii.gz" for i in range(4)] + [f"labelsTr/{case}.nii.gz"]:
            a, b = sitk.ReadImage(str(res.dataset_dir / name)), sitk.ReadImage(str(out / name))
            assert a.GetPixelID() == b.GetPixelID() and b.GetSpacing() == a.GetSpacing()
            # resample the crop back onto the original grid: identical voxels, zeros outside
            back = sitk.Resample(b, a, sitk.Transform(), sitk.sitkNearestNeighbor, 0, b.GetPixelID())
            np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(a))
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2


def test_convert_refuses_a_folder_without_cases(tmp_path):
    from BraTSMambaLib.errors import BraTSInputError
    from BraTSMambaLib.training.convert import convert_dataset, dataset_name

    (tmp_path / "empty").mkdir()
    with pytest.raises(BraTSInputError, match="no BraTS case folders"):
        convert_dataset(tmp_path / "empty", tmp_path / "raw", 5)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    with pytest.raises(BraTSInputError, match="1..999"):
        dataset_name(1000)
    assert dataset_name(5, "BraTS21") == "Dataset005_BraTS21"
    assert C.NNUNET_REGIONS["TC"] == (2, 3)


def test_convert_rejects_a_second_folder_with_the_same_case_id(tmp_path):
    from BraTSMambaLib.data.phantom import write_phantom
    from BraTSMambaLib.training.convert import convert_dataset

    write_phantom(tmp_path / "cases" / "a", seed=0, shape_xyz=(32, 32, 24))
    write_phantom(tmp_path / "cases" / "b", seed=0, shape_xyz=(32, 32, 24))
    res = convert_dataset(tmp_path / "cases", tmp_path / "raw", 992, jobs=1, progress=False)
    assert res.converted == ["BraTSPhantom_s0"]
    (folder, reason), = res.rejected.items()
    assert folder.endswith("b") and "also comes from" in reason
    assert len(list((res.dataset_dir / "imagesTr").iterdir())) == 4
