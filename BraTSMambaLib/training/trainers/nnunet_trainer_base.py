"""nnU-Net v2 trainer base with the study's settings, building networks from the BraTSMamba registry.

What it changes against nnU-Net's `nnUNetTrainer` (2.8.1), and why:

* network: `build_network_architecture` (2.7+ static signature) builds the registry model the
  subclass names (`MODEL`), with overrides from the plans configuration key `network_overrides`
  (so a compact variant travels inside plans.json to inference);
* optimiser: AdamW with a configurable epsilon (the study needed eps = 1e-4 for stability) and a
  per-model learning rate (1e-3 for U-Mamba), nnU-Net's poly schedule;
* precision: bf16 autocast where the GPU supports it (no scaler needed), else fp16 with GradScaler;
  fp32 on CPU;
* loss: nnU-Net's Dice + BCE region loss (`DC_and_BCE_loss`), deep supervision on or off, its scales
  read from the network's real outputs (not every registry model is an nnU-Net U-Net);
* checkpoints: `checkpoint_latest.pth` after every epoch (nnU-Net: every 50), written atomically,
  so `kill -9` loses at most the epoch in progress;
* run status: `status.jsonl` and `progress.png` after every epoch (see `training.status`);
* budget: a wall-clock training budget that sets the number of epochs after the first one, so
  the learning-rate schedule still ends at zero.

Settings come from environment variables, read when the trainer is created (so the stock
`nnUNetv2_train` command takes them too): BRATSMAMBA_EPOCHS, BRATSMAMBA_ITERS (training iterations
per epoch), BRATSMAMBA_VAL_ITERS, BRATSMAMBA_LR, BRATSMAMBA_ADAM_EPS, BRATSMAMBA_WEIGHT_DECAY,
BRATSMAMBA_DEEP_SUPERVISION (0/1), BRATSMAMBA_TIME_BUDGET_S, BRATSMAMBA_END_BY (Unix time by which the
last epoch must end), BRATSMAMBA_SAVE_EVERY.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from BraTSMambaLib.data import conventions as C

#: Key in a plans configuration holding registry overrides for the network (compact variants).
OVERRIDES_KEY = "network_overrides"
ENV_PREFIX = "BRATSMAMBA_"


def _env(name: str, cast, default):
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name}={raw!r} is not a valid {cast.__name__}") from None


def _flag(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on", "t")


def network_overrides(configuration_manager: ConfigurationManager) -> dict[str, Any]:
    """Registry overrides stored in the plans configuration (empty when none)."""
    return dict(configuration_manager.configuration.get(OVERRIDES_KEY) or {})


def build_registry_network(name: str, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                           num_input_channels: int, num_output_channels: int, deep_supervision: bool,
                           from_plans: bool) -> nn.Module:
    """The registry network `name` for this plan: U-Mamba takes its U-Net layout from the plans, the
    other models take the plan's patch size; overrides from the plans apply to both."""
    from BraTSMambaLib import nets

    overrides = network_overrides(configuration_manager)
    if from_plans:
        overrides["plans"] = configuration_manager
    return nets.build_model(name, in_channels=num_input_channels, out_channels=num_output_channels,
                            patch_size=tuple(configuration_manager.patch_size),
                            deep_supervision=deep_supervision, **overrides)


def registry_builder(name: str, from_plans: bool):
    """A `build_network_architecture` staticmethod (nnU-Net 2.7+ signature) for registry model `name`.

    nnU-Net calls it on the class, also at inference (`nnUNetPredictor`), so it must be static.
    """
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_registry_network(name, plans_manager, configuration_manager, num_input_channels,
                                      num_output_channels, enable_deep_supervision, from_plans)

    build_network_architecture.__doc__ = f"Build registry model {name!r} for this plan."
    return staticmethod(build_network_architecture)


def _unwrap(network: nn.Module) -> nn.Module:
    """The bare network inside DDP and torch.compile wrappers (nnU-Net wraps compile first, then DDP)."""
    mod = network.module if isinstance(network, DDP) else network
    return mod._orig_mod if isinstance(mod, OptimizedModule) else mod


class nnUNetTrainerBraTSMamba(nnUNetTrainer):
    """Shared base; a model trainer sets `MODEL` (registry name), `FROM_PLANS` and `DEFAULT_LR`, and
    gets `build_network_architecture = registry_builder(MODEL, FROM_PLANS)` from `__init_subclass__`."""

    MODEL: str = ""
    FROM_PLANS: bool = False
    DEFAULT_LR: float = 1e-3
    DEFAULT_ADAM_EPS: float = 1e-4
    DEFAULT_WEIGHT_DECAY: float = 3e-5

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.MODEL and "build_network_architecture" not in cls.__dict__:
            cls.build_network_architecture = registry_builder(cls.MODEL, cls.FROM_PLANS)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _env("EPOCHS", int, self.num_epochs)
        self.num_iterations_per_epoch = _env("ITERS", int, self.num_iterations_per_epoch)
        self.num_val_iterations_per_epoch = _env(
            "VAL_ITERS", int, max(1, min(self.num_val_iterations_per_epoch, self.num_iterations_per_epoch // 5)))
        self.initial_lr = _env("LR", float, self.DEFAULT_LR)
        self.adam_eps = _env("ADAM_EPS", float, self.DEFAULT_ADAM_EPS)
        self.weight_decay = _env("WEIGHT_DECAY", float, self.DEFAULT_WEIGHT_DECAY)
        from BraTSMambaLib import nets

        self.model_has_ds_heads = nets.get_spec(self.MODEL).supports_deep_supervision if self.MODEL else True
        self.enable_deep_supervision = _env("DEEP_SUPERVISION", _flag, self.model_has_ds_heads)
        self.time_budget_s = _env("TIME_BUDGET_S", float, 0.0)
        self.end_by = _env("END_BY", float, 0.0)
        self.save_every = _env("SAVE_EVERY", int, 1)
        self.amp_dtype = self._pick_amp_dtype()
        if self.amp_dtype != torch.float16:
            self.grad_scaler = None  # bf16 and fp32 need no loss scaling
        self._ds_scales: list | None = None
        self._train_seconds = 0.0
        self._epoch_t0 = 0.0
        self._epoch_times: list[float] = []
        self._epoch_ends: list[float] = []
        self._max_epochs = self.num_epochs
        if self.label_manager.has_regions and tuple(map(tuple, self.label_manager.foreground_regions)) != tuple(
                C.NNUNET_REGIONS[r] for r in C.REGIONS):
            self.print_to_log_file("WARNING: the dataset's regions are not BraTS WT/TC/ET; status names may mislead")

    # --- network ----------------------------------------------------------------------------------
    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Each model trainer replaces this with `registry_builder(MODEL, FROM_PLANS)`."""
        raise NotImplementedError("use a model trainer such as nnUNetTrainerUMambaBot")

    def set_deep_supervision_enabled(self, enabled: bool):
        from BraTSMambaLib import nets

        if not enabled and not self.model_has_ds_heads:
            return  # e.g. SwinUNETR: one output always
        nets.set_deep_supervision(_unwrap(self.network), enabled)

    def _get_deep_supervision_scales(self):
        """Scales of the network's deep-supervision outputs, measured once with a forward pass."""
        if not self.enable_deep_supervision:
            return None
        if self._ds_scales is None:
            net = _unwrap(self.network)
            patch = [int(p) for p in self.configuration_manager.patch_size]
            was_training = net.training
            net.eval()
            with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp_dtype,
                                                 enabled=self.amp_dtype is not None):
                outs = net(torch.zeros(1, self.num_input_channels, *patch, device=self.device))
            net.train(was_training)
            if not isinstance(outs, (list, tuple)):
                raise RuntimeError(f"{self.MODEL}: deep supervision is on but the network returns one output")
            self._ds_scales = [[o.shape[2 + i] / patch[i] for i in range(len(patch))] for o in outs]
            del outs
        return self._ds_scales

    # --- optimiser and precision ------------------------------------------------------------------
    def _pick_amp_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, eps=self.adam_eps,
                                      weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.loss(self.network(data), target)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}

    def validation_step(self, batch: dict) -> dict:
        # nnU-Net's step hard-codes fp16 autocast; run it under our dtype instead
        if self.amp_dtype is None:
            return super().validation_step(batch)
        with self._autocast():
            return super().validation_step(batch)

    # --- loop, budget, status, checkpoints --------------------------------------------------------
    def run_training(self):
        """nnU-Net's loop, but `num_epochs` may shrink while it runs (time budget)."""
        self.on_train_start()
        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = [self.train_step(next(self.dataloader_train))
                             for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        self.on_train_end()

    def on_epoch_start(self):
        self._epoch_t0 = time.time()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        super().on_epoch_start()

    def on_epoch_end(self):
        epoch_s = time.time() - self._epoch_t0
        self._train_seconds += epoch_s
        if self.local_rank == 0:
            self._write_status(epoch_s)
        self._apply_time_budget(epoch_s)
        super().on_epoch_end()

    def _apply_time_budget(self, epoch_s: float) -> None:
        """Fit the epoch count (and the LR schedule) to the budget, re-estimated after every epoch.

        Two limits, either optional: `time_budget_s` of epoch time, and `end_by`, a wall-clock time
        (Unix seconds) by which the last epoch must have ended. The first epoch of a process carries
        start-up costs (workers, cuDNN autotuning), so later epochs are timed without it; the count
        may grow back up to the configured number. Under DDP every rank takes the smallest count
        any rank computed, so all ranks stop after the same epoch (a rank that stopped alone would
        leave the others waiting in a collective).
        """
        if self.time_budget_s <= 0 and self.end_by <= 0:
            return
        self._epoch_times.append(epoch_s)
        typical = max(float(np.median(self._epoch_times[1:] or self._epoch_times)), 1e-6)
        fit = self._max_epochs
        remaining = None
        if self.time_budget_s > 0:
            remaining = self.time_budget_s - self._train_seconds
            fit = min(fit, self.current_epoch + 1 + int(max(0.0, remaining) // typical))
        if self.end_by > 0:
            now = time.time()
            self._epoch_ends.append(now)
            # wall time per epoch includes what epoch_s leaves out (checkpoint writes between epochs)
            walls = np.diff(self._epoch_ends)
            per_epoch = max(typical, float(np.median(walls))) if len(walls) else typical
            left = self.end_by - now
            remaining = left if remaining is None else min(remaining, left)
            fit = min(fit, self.current_epoch + 1 + int(max(0.0, left) // per_epoch))
        fit = agree_min(fit, self.device)
        if fit != self.num_epochs:
            self.print_to_log_file(f"time limit: {fit} epochs fit (typical epoch {typical:.1f} s, {remaining:.0f} s "
                                   f"left; budget {self.time_budget_s:.0f} s of epoch time"
                                   + (f", end by {time.strftime('%H:%M:%S', time.gmtime(self.end_by))} UTC)"
                                      if self.end_by > 0 else ")"))
            self.num_epochs = fit
            self.lr_scheduler.max_steps = fit

    def _write_status(self, epoch_s: float) -> None:
        from BraTSMambaLib.training.status import append_status, plot_progress, read_status

        def last(key):
            try:
                return self.logger.get_value(key, step=-1)
            except (KeyError, IndexError):
                return None

        dice = last("dice_per_class_or_region") or [None] * len(C.REGIONS)
        peak = torch.cuda.max_memory_allocated(self.device) / 1024 ** 3 if self.device.type == "cuda" else None
        rec: dict[str, Any] = {
            "epoch": int(self.current_epoch),
            "train_loss": _f(last("train_losses")),
            "val_loss": _f(last("val_losses")),
            **{f"dice_{r}": _f(d) for r, d in zip(C.REGIONS, dice)},
            "epoch_s": round(epoch_s, 3),
            "lr": _f(self.optimizer.param_groups[0]["lr"]),
            "peak_gpu_mem_gb": None if peak is None else round(peak, 3),
            "wall_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "iterations": int(self.num_iterations_per_epoch),
            "num_epochs": int(self.num_epochs),
            "model": self.MODEL,
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
        }
        append_status(self.output_folder, rec)
        plot_progress(read_status(self.output_folder), os.path.join(self.output_folder, "progress.png"),
                      title=f"{type(self).__name__} fold {self.fold}")

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to a temporary file and renamed: never a torn file."""
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        tmp = f"{filename}.tmp{os.getpid()}"
        super().save_checkpoint(tmp)
        os.replace(tmp, filename)

    def on_train_end(self):
        super().on_train_end()
        if self.local_rank == 0:
            # nnU-Net draws its own progress.png during on_epoch_end; ours (same name) goes last
            from BraTSMambaLib.training.status import plot_progress, read_status

            recs = read_status(self.output_folder)
            if recs:
                plot_progress(recs, os.path.join(self.output_folder, "progress.png"),
                              title=f"{type(self).__name__} fold {self.fold}")


def agree_min(value: int, device: torch.device) -> int:
    """The smallest `value` over all DDP ranks (the value itself outside DDP)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return int(value)
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([int(value)], dtype=torch.int64, device=on)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _f(v) -> float | None:
    if v is None:
        return None
    v = float(np.asarray(v))
    return v if np.isfinite(v) else None
