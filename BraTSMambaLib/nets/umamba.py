"""U-Mamba Bot and Enc (bowang-lab/U-Mamba, `UMambaBot_3d.py` / `UMambaEnc_3d.py`), 3D.

Same module tree as upstream, so state dicts have the same keys and shapes (397 / 518 entries
for the 6-stage 128^3 BraTS plan with 3 heads) and upstream checkpoints load strictly.

* Bot: nnU-Net residual encoder, one Mamba layer on the bottleneck skip, residual decoder.
* Enc: a Mamba layer after every encoder stage; a stage whose feature map has no more voxels
  than channels scans channels as tokens (d_model = voxels), so Enc is tied to its input size.

The Mamba layer (LayerNorm -> Mamba, no residual) runs in fp32 with autocast off, as upstream:
bf16 stability of this layer was not measured here, so upstream's choice is kept.
Upstream mutates the block counts: the second half of the encoder and the deepest decoder
stages get one block each; this is reproduced (on copies of the lists).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.nets.defaults import BRATS_PLAN, plans_to_kwargs
from BraTSMambaLib.nets.nnunet_blocks import UNetResDecoder, UNetResEncoder
from BraTSMambaLib.ssm import Mamba


class MambaLayer(nn.Module):
    """LayerNorm -> Mamba over the flattened volume (or over channels), fp32, no residual."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 channel_token: bool = False) -> None:
        super().__init__()
        self.dim = int(dim)
        self.norm = nn.LayerNorm(self.dim)
        self.mamba = Mamba(d_model=self.dim, d_state=d_state, d_conv=d_conv, expand=expand)
        self.channel_token = channel_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            b, c = x.shape[:2]
            dims = x.shape[2:]
            if self.channel_token:
                if dims.numel() != self.dim:
                    raise BraTSInputError(f"U-Mamba Enc: this layer scans {self.dim} voxels as channel tokens, "
                                          f"got a {tuple(dims)} feature map; use the model's patch size")
                return self.mamba(self.norm(x.flatten(2))).reshape(b, c, *dims)
            tokens = x.reshape(b, c, -1).transpose(-1, -2)
            return self.mamba(self.norm(tokens)).transpose(-1, -2).reshape(b, c, *dims)


class ResidualMambaEncoder(UNetResEncoder):
    """UNetResEncoder with a MambaLayer after every stage (U-Mamba Enc)."""

    def __init__(self, input_size: Sequence[int], *args, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        layers, size = [], list(input_size)
        for s, stride in enumerate(self.strides):
            size = [i // j for i, j in zip(size, stride)]
            channel_token = int(np.prod(size)) <= self.output_channels[s]
            dim = int(np.prod(size)) if channel_token else self.output_channels[s]
            layers.append(MambaLayer(dim, d_state, d_conv, expand, channel_token=channel_token))
        self.mamba_layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage, mamba in zip(self.stages, self.mamba_layers):
            x = mamba(stage(x))
            skips.append(x)
        return skips


def _block_counts(n_stages: int, enc: Sequence[int] | int, dec: Sequence[int] | int) -> tuple[list[int], list[int]]:
    enc = [enc] * n_stages if isinstance(enc, int) else list(enc)
    dec = [dec] * (n_stages - 1) if isinstance(dec, int) else list(dec)
    if len(enc) != n_stages or len(dec) != n_stages - 1:
        raise BraTSInputError(f"U-Mamba: need {n_stages} encoder and {n_stages - 1} decoder block counts, "
                              f"got {len(enc)} and {len(dec)}")
    for s in range(math.ceil(n_stages / 2), n_stages):
        enc[s] = 1
    for s in range(math.ceil((n_stages - 1) / 2 + 0.5), n_stages - 1):
        dec[s] = 1
    return enc, dec


class _UMambaBase(nn.Module):
    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool, n_stages: int,
                 features_per_stage: Sequence[int], kernel_sizes: Sequence[Sequence[int]],
                 strides: Sequence[Sequence[int]], n_conv_per_stage: Sequence[int] | int,
                 n_conv_per_stage_decoder: Sequence[int] | int, input_size: Sequence[int] | None = None,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2) -> None:
        super().__init__()
        if not (len(features_per_stage) == len(kernel_sizes) == len(strides) == n_stages):
            raise BraTSInputError(f"U-Mamba: features_per_stage, kernel_sizes and strides need {n_stages} entries")
        enc_blocks, dec_blocks = _block_counts(n_stages, n_conv_per_stage, n_conv_per_stage_decoder)
        enc_args = (input_channels, n_stages, list(features_per_stage), nn.Conv3d,
                    [list(k) for k in kernel_sizes], [list(s) for s in strides], enc_blocks)
        enc_kwargs = dict(conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                          nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
        self.encoder = self._make_encoder(enc_args, enc_kwargs, input_size, d_state, d_conv, expand)
        self.decoder = UNetResDecoder(self.encoder, num_classes, dec_blocks, deep_supervision)

    def _make_encoder(self, args, kwargs, input_size, d_state, d_conv, expand) -> UNetResEncoder:
        raise NotImplementedError

    @classmethod
    def from_plans(cls, configuration: Any, input_channels: int, num_classes: int,
                   deep_supervision: bool = True, **overrides: Any) -> "_UMambaBase":
        """Build from an nnU-Net ConfigurationManager or configuration dict (old or new plans format)."""
        return cls(input_channels, num_classes, deep_supervision, **{**plans_to_kwargs(configuration), **overrides})


class UMambaBot(_UMambaBase):
    """U-Mamba Bot: Mamba layer on the bottleneck only."""

    def _make_encoder(self, args, kwargs, input_size, d_state, d_conv, expand) -> UNetResEncoder:
        encoder = UNetResEncoder(*args, **kwargs)
        self.mamba_layer = MambaLayer(encoder.output_channels[-1], d_state, d_conv, expand)
        return encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = self.encoder(x)
        skips[-1] = self.mamba_layer(skips[-1])
        return self.decoder(skips)


class UMambaEnc(_UMambaBase):
    """U-Mamba Enc: a Mamba layer after every encoder stage; tied to `input_size`."""

    def _make_encoder(self, args, kwargs, input_size, d_state, d_conv, expand) -> UNetResEncoder:
        if input_size is None:
            raise BraTSInputError("U-Mamba Enc needs the input (patch) size")
        return ResidualMambaEncoder(input_size, *args, d_state=d_state, d_conv=d_conv, expand=expand, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))


def build_umambabot(in_channels: int, out_channels: int, patch_size: Sequence[int], deep_supervision: bool,
                    plans: Any = None, **overrides: Any) -> UMambaBot:
    """Registry constructor: BRATS_PLAN (or `plans`), any field overridable."""
    kw = {**BRATS_PLAN, **(plans_to_kwargs(plans) if plans is not None else {}), **overrides}
    kw.pop("input_size", None)
    return UMambaBot(in_channels, out_channels, deep_supervision, **kw)


def build_umambaenc(in_channels: int, out_channels: int, patch_size: Sequence[int], deep_supervision: bool,
                    plans: Any = None, **overrides: Any) -> UMambaEnc:
    """Registry constructor; `input_size` defaults to `patch_size` (channel tokens depend on it)."""
    kw = {**BRATS_PLAN, "input_size": list(patch_size), **(plans_to_kwargs(plans) if plans is not None else {}),
          **overrides}
    return UMambaEnc(in_channels, out_channels, deep_supervision, **kw)
