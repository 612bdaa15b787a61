"""Inference forms of the convolution blocks our networks are built from: every instance norm's
following residual add and activation happen in the same pass (`norm_kernels`), a convolution's
bias is dropped where an instance norm follows it (the norm subtracts every per-channel constant)
or moved into that norm's shift where it feeds the residual, the UNETR decoder's skip
concatenation is one vectorised copy (`concat_kernel`), and the 3x3x3 convolutions at 48 channels and on
the 4-channel input (with a residual branch's 1x1x1 convolution of it) run our own kernels, which also write
the statistics of the norms that follow (`conv3d_kernels`).

`fuse_norms(model)` changes module classes in place (`module.__class__ = Fused...`): each fused
class subclasses the original and only overrides `forward`, so parameters, buffers, state-dict keys,
hooks and isinstance checks stay as they were. The fused paths run for 5-D CUDA tensors when no gradient
is needed; anything else (CPU, training, autograd) takes the original code path, so a fused model
remains a correct model everywhere.
"""
from __future__ import annotations

import importlib
import os

import torch
from torch import nn
from torch.nn import functional as F

from BraTSMambaLib.nets.fused import conv3d_kernels


def _triton_module(name: str):
    """A module of Triton kernels of this package, or None where triton does not work."""
    if name not in _MODULES:
        try:
            _MODULES[name] = importlib.import_module(f"BraTSMambaLib.nets.fused.{name}")
        except Exception:  # noqa: BLE001 - no triton / no GPU compiler: the unfused path is correct
            _MODULES[name] = None
    return _MODULES[name]


def _kernels():
    """The norm kernels module, or None where triton does not work."""
    return _triton_module("norm_kernels")


_MODULES: dict[str, object] = {}
#: Triton's CPU interpreter (tests) runs the kernels on CPU tensors too.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def kernels_available() -> bool:
    """Whether the Triton kernels import here (triton installed and working)."""
    return _kernels() is not None


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


def _fast(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether the kernels serve `module` on input `x`: a 5-D CUDA tensor (or the interpreter), triton
    working, and no gradient wanted."""
    if _kernels() is None or not (x.is_cuda or _INTERPRETED) or x.dim() != 5:
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())))


def _plain_conv(module: nn.Module) -> nn.Conv3d | None:
    """The nn.Conv3d a module is (or a MONAI Convolution holds alone), if it pads with zeros."""
    conv = module
    if not isinstance(conv, nn.Conv3d) and isinstance(conv, nn.Sequential) and len(conv) == 1:
        conv = conv[0]
    if isinstance(conv, nn.Conv3d) and type(conv).forward is nn.Conv3d.forward and conv.padding_mode == "zeros":
        return conv
    return None


def _conv_without_bias(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(module(x) without its bias, the bias): for a convolution an instance norm follows, whose
    per-channel bias the norm would subtract again (or which the norm's shift can take)."""
    y, bias, _ = _conv_for_norm(module, x, sums=False)
    return y, bias


def _conv_for_norm(module: nn.Module, x: torch.Tensor, sums: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
    """(module(x) without its bias, the bias, the output's partial sums for the instance norm that follows
    or None): 48-channel 3x3x3 convolutions run `conv3d_kernels.conv3d_c48`, which writes the sums as it
    stores."""
    conv = _plain_conv(module)
    if conv is None:
        return module(x), None, None
    if conv3d_kernels.applies(x, conv):
        if sums:
            y, partial = conv3d_kernels.conv3d_c48(x, conv.weight, stats=True)
            return y, conv.bias, partial
        return conv3d_kernels.conv3d_c48(x, conv.weight), conv.bias, None
    return F.conv3d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups), conv.bias, None


class FusedInstanceNorm3d(nn.InstanceNorm3d):
    """nn.InstanceNorm3d whose forward also takes the residual to add and the activation to apply."""

    def fused(self, x: torch.Tensor, residual: torch.Tensor | None = None, act: nn.Module | None = None,
              extra_bias: torch.Tensor | None = None, sums: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> torch.Tensor:
        """The kernel path (callers have checked `_fast`): act(norm(x) + extra_bias + residual); `sums` are
        x's partial sums where the convolution that wrote x made them."""
        kind, slope = _act_of(act)
        return _kernels().instance_norm_ndhwc(x, self.weight, self.bias, self.eps, kind, slope, residual, extra_bias,
                                              sums=sums)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, act: nn.Module | None = None
                ) -> torch.Tensor:
        if _norm(self) and _fast(x, self):
            return self.fused(x, residual=residual, act=act)
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
    """The module if the fused kernel can stand in for it (an instance norm without running statistics)."""
    return module if isinstance(module, FusedInstanceNorm3d) and not module.track_running_stats else None


def _fused_blocks() -> dict[type, type]:
    """Original block class -> fused subclass, for the blocks our networks use."""
    from dynamic_network_architectures.building_blocks.residual import BasicBlockD
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
    from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock
    from monai.networks.blocks.unetr_block import UnetrUpBlock

    from BraTSMambaLib.nets.nnunet_blocks import BasicResBlock, UpsampleLayer
    from BraTSMambaLib.nets.segmamba import GSC

    def conv_norm(conv, norm, x, act=None, residual=None):
        y, _, sums = _conv_for_norm(conv, x)
        return norm.fused(y, residual=residual, act=act, sums=sums)

    def input_convs(block, inp):
        """(act(norm1(conv1(inp))), norm3(conv3(inp))) from one `conv3d_c4` call on a 4-channel input (the
        convolutions' biases cancel in the norms), or None where that kernel does not serve the block."""
        conv1, conv3 = _plain_conv(block.conv1), None
        if hasattr(block, "conv3"):
            conv3 = _plain_conv(block.conv3)
            if conv3 is None or not _norm(getattr(block, "norm3", None)):
                return None
        if conv1 is None or not conv3d_kernels.applies_c4(inp, conv1, conv3):
            return None
        ys, sums = conv3d_kernels.conv3d_c4(inp, conv1.weight, None if conv3 is None else conv3.weight, stats=True)
        out = block.norm1.fused(ys[0], act=block.lrelu, sums=sums[0])
        return out, inp if conv3 is None else block.norm3.fused(ys[1], sums=sums[1])

    class FusedUnetResBlock(UnetResBlock):
        def forward(self, inp):
            if not (_norm(self.norm1) and _norm(self.norm2) and _fusable(self.lrelu) and _fast(inp, self)):
                return super().forward(inp)
            both = input_convs(self, inp)
            if both is not None:
                out, residual = both
            else:
                out = conv_norm(self.conv1, self.norm1, inp, act=self.lrelu)
                residual = inp
                if hasattr(self, "conv3"):
                    residual = self.conv3(inp)
                if hasattr(self, "norm3"):
                    residual = self.norm3(residual)
            out, _, sums = _conv_for_norm(self.conv2, out)
            return self.norm2.fused(out, residual=residual, act=self.lrelu, sums=sums)

    class FusedUnetBasicBlock(UnetBasicBlock):
        def forward(self, inp):
            if not (_norm(self.norm1) and _norm(self.norm2) and _fusable(self.lrelu) and _fast(inp, self)):
                return super().forward(inp)
            out = conv_norm(self.conv1, self.norm1, inp, act=self.lrelu)
            return conv_norm(self.conv2, self.norm2, out, act=self.lrelu)

    class FusedGSC(GSC):
        def forward(self, x):
            norms = (self.norm, self.norm2, self.norm3, self.norm4)
            acts = (self.nonliner, self.nonliner2, self.nonliner3, self.nonliner4)
            if not (all(_norm(n) for n in norms) and all(_fusable(a) for a in acts) and _fast(x, self)):
                return super().forward(x)
            x1 = conv_norm(self.proj, self.norm, x, act=self.nonliner)
            x1 = conv_norm(self.proj2, self.norm2, x1, act=self.nonliner2)
            x2 = conv_norm(self.proj3, self.norm3, x, act=self.nonliner3)
            return conv_norm(self.proj4, self.norm4, x1 + x2, act=self.nonliner4) + x

    class FusedUnetrUpBlock(UnetrUpBlock):
        """The skip concatenation as one vectorised NDHWC copy (`concat_kernel`)."""

        def forward(self, inp, skip):
            concat = _triton_module("concat_kernel")
            out = self.transp_conv(inp)
            if (concat is None or not _fast(inp, self) or out.dtype != skip.dtype
                    or out.shape[2:] != skip.shape[2:]):
                return self.conv_block(torch.cat((out, skip), dim=1))
            return self.conv_block(concat.concat_channels_ndhwc(out, skip))

    class FusedConvDropoutNormReLU(ConvDropoutNormReLU):
        def forward(self, x):
            mods = list(self.all_modules)
            if not (len(mods) >= 2 and _norm(mods[1]) and (len(mods) == 2 or (len(mods) == 3 and _fusable(mods[2])))
                    and _fast(x, self)):
                return super().forward(x)
            return conv_norm(mods[0], mods[1], x, act=mods[2] if len(mods) == 3 else None)

    class FusedBasicBlockD(BasicBlockD):
        def forward(self, x):
            tail = list(self.conv2.all_modules)
            if (self.apply_stochastic_depth or self.apply_se or len(tail) != 2 or not _norm(tail[1])
                    or not isinstance(self.nonlin2, nn.Module) or not _fusable(self.nonlin2) or not _fast(x, self)):
                return super().forward(x)
            residual = self.skip(x)
            return conv_norm(tail[0], tail[1], self.conv1(x), act=self.nonlin2, residual=residual)

    class FusedBasicResBlock(BasicResBlock):
        def forward(self, x):
            if not (_norm(self.norm1) and _norm(self.norm2) and _fusable(self.act1) and _fusable(self.act2)
                    and _fast(x, self)):
                return super().forward(x)
            y = conv_norm(self.conv1, self.norm1, x, act=self.act1)
            y, _, sums = _conv_for_norm(self.conv2, y)
            residual, extra = x, None
            if self.conv3 is not None:
                residual, extra = _conv_without_bias(self.conv3, x)   # its bias joins the norm's shift
            return self.norm2.fused(y, residual=residual, act=self.act2, extra_bias=extra, sums=sums)

    class FusedUpsampleLayer(UpsampleLayer):
        """Nearest upsampling commutes with a 1x1 convolution: convolve the 8x smaller input first."""

        def forward(self, x):
            conv = _plain_conv(self.conv)
            if not (self.mode == "nearest" and conv is not None and all(k == 1 for k in conv.kernel_size)
                    and all(s == 1 for s in conv.stride) and all(f == int(f) for f in self.pool_op_kernel_size)
                    and _fast(x, self)):
                return super().forward(x)
            y = self.conv(x)
            n, c, d, h, w = y.shape
            fd, fh, fw = (int(f) for f in self.pool_op_kernel_size)
            y = y.permute(0, 2, 3, 4, 1)[:, :, None, :, None, :, None, :].expand(n, d, fd, h, fh, w, fw, c)
            return y.reshape(n, d * fd, h * fh, w * fw, c).permute(0, 4, 1, 2, 3)   # one copy, NDHWC memory

    return {UnetResBlock: FusedUnetResBlock, UnetBasicBlock: FusedUnetBasicBlock, GSC: FusedGSC,
            UnetrUpBlock: FusedUnetrUpBlock,
            ConvDropoutNormReLU: FusedConvDropoutNormReLU, BasicBlockD: FusedBasicBlockD,
            BasicResBlock: FusedBasicResBlock, UpsampleLayer: FusedUpsampleLayer}


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


__all__: list[str] = ["FusedInstanceNorm3d", "FusedLayerNorm", "fuse_norms", "is_fused", "kernels_available"]
