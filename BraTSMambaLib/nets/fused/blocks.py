"""Inference forms of the convolution blocks our networks are built from, with every instance norm's
following residual add and activation done in the same pass (`norm_kernels`).

`fuse_norms(model)` changes module classes in place (`module.__class__ = Fused...`): each fused
class subclasses the original and only overrides `forward`, so parameters, buffers, state-dict keys,
hooks and isinstance checks stay as they were. The fused paths run for 5-D CUDA tensors when no gradient
is needed; anything else (CPU, training, autograd) takes the original code path, so a fused model
remains a correct model everywhere.
"""
from __future__ import annotations

import os

import torch
from torch import nn


def _kernels():
    """The Triton kernels module, or None where triton does not work."""
    global _KERNELS
    if _KERNELS is False:
        try:
            from BraTSMambaLib.nets.fused import norm_kernels
            _KERNELS = norm_kernels
        except Exception:  # noqa: BLE001 - no triton / no GPU compiler: the unfused path is correct
            _KERNELS = None
    return _KERNELS


_KERNELS: object = False
#: Triton's CPU interpreter (tests) runs the kernels on CPU tensors too.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _act_of(module) -> tuple[str | None, float]:
    """(kind, negative slope) of an activation module; ValueError for one the kernel does not have."""
    if module is None or isinstance(module, nn.Identity):
        return None, 0.0
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", float(module.negative_slope)
    if isinstance(module, nn.ReLU):
        return "relu", 0.0
    raise ValueError(f"no fused form for activation {type(module).__name__}")


def _fusable(module) -> bool:
    try:
        _act_of(module)
        return True
    except ValueError:
        return False


class FusedInstanceNorm3d(nn.InstanceNorm3d):
    """nn.InstanceNorm3d whose forward also takes the residual to add and the activation to apply."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, act: nn.Module | None = None
                ) -> torch.Tensor:
        kind, slope = _act_of(act)
        k = _kernels()
        if (k is not None and (x.is_cuda or _INTERPRETED) and x.dim() == 5 and not self.track_running_stats
                and not (torch.is_grad_enabled() and (x.requires_grad or (self.weight is not None and self.weight.requires_grad)))):
            return k.instance_norm_ndhwc(x, self.weight, self.bias, self.eps, kind, slope, residual)
        y = super().forward(x)
        if residual is not None:
            y = y + residual
        return act(y) if act is not None else y


class FusedLayerNorm(nn.LayerNorm):
    """nn.LayerNorm over one last dimension of at most 1024, as one Triton pass on CUDA without gradients."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = _kernels()
        if (k is not None and (x.is_cuda or _INTERPRETED) and len(self.normalized_shape) == 1
                and self.normalized_shape[0] <= 1024 and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
                and not (torch.is_grad_enabled() and (x.requires_grad or (self.weight is not None and self.weight.requires_grad)))):
            return k.layer_norm_rows(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def _norm(module: nn.Module) -> FusedInstanceNorm3d | None:
    return module if isinstance(module, FusedInstanceNorm3d) else None


def _fused_blocks() -> dict[type, type]:
    """Original block class -> fused subclass, for the blocks our networks use."""
    from dynamic_network_architectures.building_blocks.residual import BasicBlockD
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
    from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock

    from BraTSMambaLib.nets.segmamba import GSC

    class FusedUnetResBlock(UnetResBlock):
        def forward(self, inp):
            if not (_norm(self.norm1) and _norm(self.norm2) and _fusable(self.lrelu)):
                return super().forward(inp)
            out = self.norm1(self.conv1(inp), act=self.lrelu)
            out = self.conv2(out)
            residual = self.conv3(inp) if hasattr(self, "conv3") else inp
            if hasattr(self, "norm3"):
                residual = self.norm3(residual)
            return self.norm2(out, residual=residual, act=self.lrelu)

    class FusedUnetBasicBlock(UnetBasicBlock):
        def forward(self, inp):
            if not (_norm(self.norm1) and _norm(self.norm2) and _fusable(self.lrelu)):
                return super().forward(inp)
            out = self.norm1(self.conv1(inp), act=self.lrelu)
            return self.norm2(self.conv2(out), act=self.lrelu)

    class FusedGSC(GSC):
        def forward(self, x):
            norms = (self.norm, self.norm2, self.norm3, self.norm4)
            acts = (self.nonliner, self.nonliner2, self.nonliner3, self.nonliner4)
            if not (all(_norm(n) for n in norms) and all(_fusable(a) for a in acts)):
                return super().forward(x)
            x1 = self.norm(self.proj(x), act=self.nonliner)
            x1 = self.norm2(self.proj2(x1), act=self.nonliner2)
            x2 = self.norm3(self.proj3(x), act=self.nonliner3)
            return self.norm4(self.proj4(x1 + x2), act=self.nonliner4) + x

    class FusedConvDropoutNormReLU(ConvDropoutNormReLU):
        def forward(self, x):
            mods = list(self.all_modules)
            if not (len(mods) >= 2 and _norm(mods[1]) and (len(mods) == 2 or (len(mods) == 3 and _fusable(mods[2])))):
                return super().forward(x)
            return mods[1](mods[0](x), act=mods[2] if len(mods) == 3 else None)

    class FusedBasicBlockD(BasicBlockD):
        def forward(self, x):
            tail = list(self.conv2.all_modules)
            if (self.apply_stochastic_depth or self.apply_se or len(tail) != 2 or not _norm(tail[1])
                    or not isinstance(self.nonlin2, nn.Module) or not _fusable(self.nonlin2)):
                return super().forward(x)
            residual = self.skip(x)
            return tail[1](tail[0](self.conv1(x)), residual=residual, act=self.nonlin2)

    return {UnetResBlock: FusedUnetResBlock, UnetBasicBlock: FusedUnetBasicBlock, GSC: FusedGSC,
            ConvDropoutNormReLU: FusedConvDropoutNormReLU, BasicBlockD: FusedBasicBlockD}


def fuse_norms(model: nn.Module) -> nn.Module:
    """In place: every nn.InstanceNorm3d becomes a FusedInstanceNorm3d, every nn.LayerNorm a FusedLayerNorm
    and every known block its fused form (same parameters and state-dict keys); returns the model."""
    blocks = _fused_blocks()
    for module in model.modules():
        if type(module) is nn.InstanceNorm3d:
            module.__class__ = FusedInstanceNorm3d
        elif type(module) is nn.LayerNorm:
            module.__class__ = FusedLayerNorm
        elif type(module) in blocks:
            module.__class__ = blocks[type(module)]
    return model


def is_fused(model: nn.Module) -> bool:
    """Whether `fuse_norms` has been applied to the model."""
    return any(isinstance(m, FusedInstanceNorm3d) for m in model.modules())


__all__: list[str] = ["FusedInstanceNorm3d", "FusedLayerNorm", "fuse_norms", "is_fused"]
