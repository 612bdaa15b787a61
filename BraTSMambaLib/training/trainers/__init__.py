"""nnU-Net v2 trainers for the registry models. This folder is what `nnUNet_extTrainer` points to."""
from __future__ import annotations

import os

TRAINER_DIR = os.path.dirname(os.path.abspath(__file__))
TRAINER_PREFIX = "nnUNetTrainer"


def get_trainer_class(model: str):
    """The trainer class of a registry model name (case-insensitive; imports nnU-Net)."""
    from BraTSMambaLib.training.trainers.nnunet_trainers import TRAINERS

    try:
        return TRAINERS[model.strip().lower()]
    except KeyError:
        raise KeyError(f"no trainer for model {model!r}; trainers exist for {', '.join(sorted(TRAINERS))}") from None


def trainer_name(model: str) -> str:
    """nnU-Net trainer class name for a registry model name."""
    return get_trainer_class(model).__name__
