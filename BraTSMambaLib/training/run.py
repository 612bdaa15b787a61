"""Run an nnU-Net training with a registry-model trainer (what `brats-mamba train` does).

The same run as `nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainer<Model> -p PLANS [--c]`
with `nnUNet_extTrainer` pointing at our trainers; the study settings travel as BRATSMAMBA_*
environment variables (see `trainers.nnunet_trainer_base`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.training.planning import CONFIGURATION, DEFAULT_PLANS, dataset_folder_name


@dataclass
class TrainSettings:
    """Trainer settings; None keeps the trainer's default."""

    epochs: int | None = None
    iters: int | None = None
    val_iters: int | None = None
    lr: float | None = None
    adam_eps: float | None = None
    weight_decay: float | None = None
    deep_supervision: bool | None = None
    time_budget_s: float | None = None
    end_by: float | None = None
    save_every: int | None = None

    def environment(self) -> dict[str, str]:
        env = {}
        for key, value in vars(self).items():
            if value is not None:
                env[f"BRATSMAMBA_{key.upper()}"] = str(int(value) if isinstance(value, bool) else value)
        return env


def trainer_environment(settings: TrainSettings, *, compile: bool = False,
                        da_processes: int | None = None) -> dict[str, str]:
    """Environment for a training process: external trainers, study settings, compile switch."""
    from BraTSMambaLib.training.trainers import TRAINER_DIR

    ext = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p and p != TRAINER_DIR]
    env = {"nnUNet_extTrainer": os.pathsep.join([TRAINER_DIR, *ext]), "nnUNet_compile": "t" if compile else "f",
           **settings.environment()}
    if da_processes is not None:
        env["nnUNet_n_proc_DA"] = str(int(da_processes))
    return env


def resolve_training_device(name: str):
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BraTSInputError("--device cuda: no CUDA device is available here")
    if name not in ("cpu", "cuda", "mps"):
        raise BraTSInputError(f"--device {name}: use auto, cpu, cuda or mps")
    return torch.device(name)


def train(dataset: int | str, model: str, fold: int | str = 0, *, plans: str = DEFAULT_PLANS,
          settings: TrainSettings | None = None, device: str = "auto", num_gpus: int = 1,
          continue_training: bool = False, validate: bool = True, compile: bool = False,
          da_processes: int | None = None, extra_env: Mapping[str, str] | None = None) -> Path:
    """Train fold `fold` of `dataset` with the trainer of registry model `model`; returns the fold folder."""
    from BraTSMambaLib import nets
    from BraTSMambaLib.training.trainers import trainer_name

    spec = nets.get_spec(model)
    try:
        tr_name = trainer_name(spec.name)
    except KeyError as e:
        raise BraTSInputError(f"--model {model}: {e.args[0]}") from None
    if not os.environ.get("nnUNet_preprocessed") or not os.environ.get("nnUNet_results"):
        raise BraTSInputError("nnUNet_preprocessed and nnUNet_results must be set (or pass --preprocessed/--results)")
    name = dataset_folder_name(dataset)
    os.environ.update(trainer_environment(settings or TrainSettings(), compile=compile, da_processes=da_processes))
    os.environ.update(dict(extra_env or {}))
    dev = resolve_training_device(device)
    fold_arg: int | str = fold if str(fold) == "all" else int(fold)

    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    if num_gpus > 1:
        if dev.type != "cuda" or torch.cuda.device_count() < num_gpus:
            raise BraTSInputError(f"--num-gpus {num_gpus}: needs {num_gpus} CUDA devices, "
                                  f"{torch.cuda.device_count()} visible")
        import torch.multiprocessing as mp
        from nnunetv2.run.run_training import find_free_network_port

        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ.setdefault("MASTER_PORT", str(find_free_network_port()))
        mp.spawn(_ddp_worker, args=(num_gpus, name, fold_arg, tr_name, plans, continue_training, validate),
                 nprocs=num_gpus, join=True)
        out = Path(os.environ["nnUNet_results"]) / name / f"{tr_name}__{plans}__{CONFIGURATION}"
        return out / f"fold_{fold_arg}"
    trainer = get_trainer_from_args(name, CONFIGURATION, fold_arg, tr_name, plans, continue_training, device=dev)
    maybe_load_checkpoint(trainer, continue_training, False)
    _run(trainer, validate)
    return Path(trainer.output_folder)


def _run(trainer, validate: bool) -> None:
    """Train, then nnU-Net's full-case validation unless `validate` is False (as nnU-Net's entry point)."""
    import torch

    if trainer.device.type == "cuda":
        torch.set_num_threads(1)  # nnUNetv2_train does this: CPU threads do not help a GPU run's main process
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    trainer.run_training()
    if validate:
        trainer.perform_actual_validation(False)


def _ddp_worker(rank: int, world_size: int, name: str, fold: int | str, tr_name: str, plans: str,
                continue_training: bool, validate: bool) -> None:
    """One process of a DDP run: nnU-Net's `run_ddp`, except that `validate=False` skips the full-case
    validation (nnU-Net's always runs it) and the main process keeps one CPU thread."""
    import torch
    import torch.distributed as dist
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    try:
        torch.cuda.set_device(torch.device("cuda", rank))
        trainer = get_trainer_from_args(name, CONFIGURATION, fold, tr_name, plans, continue_training)
        maybe_load_checkpoint(trainer, continue_training, False)
        _run(trainer, validate)
    finally:
        dist.destroy_process_group()
