"""One nnU-Net trainer per registry model: `nnUNetTrainer<registry name>`.

`nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerUMambaBot` finds these when
`nnUNet_extTrainer` names this folder (`brats-mamba train` sets it). The class name minus the
`nnUNetTrainer` prefix is the registry name (case aside), which is how `import-nnunet` maps a
results folder back to the network; MedNeXt has one trainer per registered size (S, B, M, L). Learning rates: 1e-3 for U-Mamba as in the study; the others use the same
AdamW setting (SwinUNETR 1e-4, MONAI's recommendation for it).
"""
from __future__ import annotations

from BraTSMambaLib.training.trainers.nnunet_trainer_base import nnUNetTrainerBraTSMamba


class nnUNetTrainerSegMamba(nnUNetTrainerBraTSMamba):
    MODEL, FROM_PLANS, DEFAULT_LR = "SegMamba", False, 1e-3


class nnUNetTrainerUMambaBot(nnUNetTrainerBraTSMamba):
    MODEL, FROM_PLANS, DEFAULT_LR = "UMambaBot", True, 1e-3


class nnUNetTrainerUMambaEnc(nnUNetTrainerBraTSMamba):
    MODEL, FROM_PLANS, DEFAULT_LR = "UMambaEnc", True, 1e-3


class nnUNetTrainerVMUNet3D(nnUNetTrainerBraTSMamba):
    MODEL, FROM_PLANS, DEFAULT_LR = "VMUNet3D", False, 1e-3


class nnUNetTrainerMedNeXt_S(nnUNetTrainerBraTSMamba):
    MODEL, FROM_PLANS, DEFAULT_LR = "mednext_s", False, 1e-3


class nnUNetTrainerMedNeXt_B(nnUNetTrainerBraTSMamba):
    MODEL, FROM_PLANS, DEFAULT_LR = "mednext_b", False, 1e-3


class nnUNetTrainerMedNeXt_M(nnUNetTrainerBraTSMamba):
    MODEL, FROM_PLANS, DEFAULT_LR = "mednext_m", False, 1e-3


class nnUNetTrainerMedNeXt_L(nnUNetTrainerBraTSMamba):
    MODEL, FROM_PLANS, DEFAULT_LR = "mednext_l", False, 1e-3


class nnUNetTrainerSwinUNETR(nnUNetTrainerBraTSMamba):
    MODEL, FROM_PLANS, DEFAULT_LR = "SwinUNETR", False, 1e-4


#: Registry name -> trainer class.
TRAINERS = {cls.MODEL.lower(): cls for cls in (
    nnUNetTrainerSegMamba, nnUNetTrainerUMambaBot, nnUNetTrainerUMambaEnc, nnUNetTrainerVMUNet3D,
    nnUNetTrainerMedNeXt_S, nnUNetTrainerMedNeXt_B, nnUNetTrainerMedNeXt_M, nnUNetTrainerMedNeXt_L,
    nnUNetTrainerSwinUNETR)}
