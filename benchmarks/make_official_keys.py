"""Regenerate Testing/data/official_keys/*.json from the OFFICIAL model definitions.

The expected state-dict layouts the model tests compare against are not written by hand: this
script instantiates the upstream classes themselves and dumps `{key: shape}` for each reference
configuration. The upstream code is NOT vendored: pass paths to local copies of

  * ge-xing/SegMamba            model_segmamba/segmamba.py
  * bowang-lab/U-Mamba          umamba/nnunetv2/nets/UMambaBot_3d.py and UMambaEnc_3d.py

Upstream imports `mamba_ssm.Mamba`, whose CUDA extension does not build on a CPU machine. Only
parameter names and shapes are needed, so a parameter-compatible stand-in module named
`mamba_ssm` is installed first (its layout follows mamba_ssm 1.x `Mamba.__init__`, plus the
`_b` / `_s` copies of SegMamba's bimamba "v3"); nothing is run forward. Everything else
(MONAI UNETR blocks, dynamic_network_architectures' BasicBlockD) is the real installed library.

Usage:
    python benchmarks/make_official_keys.py --segmamba /path/segmamba.py \
        --umamba-bot /path/UMambaBot_3d.py --umamba-enc /path/UMambaEnc_3d.py \
        [--out Testing/data/official_keys]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch
from torch import nn

#: The 6-stage 128^3 BraTS plan of nnU-Net (Dataset137 region training, 3D full-res).
BRATS_PLAN = {
    "n_stages": 6,
    "features_per_stage": [32, 64, 128, 256, 320, 320],
    "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
    "n_conv_per_stage": [2] * 6,
    "n_conv_per_stage_decoder": [2] * 5,
}


class _MambaStandIn(nn.Module):
    """Parameters of mamba_ssm.Mamba (names, shapes, order) without any kernel."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", conv_bias=True, bias=False,
                 bimamba_type="none", nslices=5, **_):
        super().__init__()
        d_inner = int(expand * d_model)
        rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        suffixes = {"none": [""], "v2": ["", "_b"], "v3": ["", "_b", "_s"]}[bimamba_type]
        for s in suffixes:
            if s:
                self.register_parameter(f"A{s}_log", nn.Parameter(torch.zeros(d_inner, d_state)))
            setattr(self, f"conv1d{s}", nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1,
                                                   bias=conv_bias))
            setattr(self, f"x_proj{s}", nn.Linear(d_inner, rank + 2 * d_state, bias=False))
            setattr(self, f"dt_proj{s}", nn.Linear(rank, d_inner, bias=True))
            if not s:
                self.A_log = nn.Parameter(torch.zeros(d_inner, d_state))
            self.register_parameter(f"D{s}", nn.Parameter(torch.ones(d_inner)))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)


def _install_stand_in() -> None:
    mod = types.ModuleType("mamba_ssm")
    mod.Mamba = _MambaStandIn
    sys.modules["mamba_ssm"] = mod


def _load(path: Path, name: str):
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dump(model: nn.Module, out: Path, source: str, config: dict) -> None:
    sd = model.state_dict()
    keys = {k: list(v.shape) for k, v in sd.items()}
    doc = {
        "source": source,
        "config": config,
        "num_entries": len(keys),
        "num_params": sum(p.numel() for p in model.parameters()),
        "keys": keys,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{out.name}: {doc['num_entries']} entries, {doc['num_params']:,} parameters")


def _umamba_kwargs() -> dict:
    return {
        "input_channels": 4,
        "n_stages": BRATS_PLAN["n_stages"],
        "features_per_stage": list(BRATS_PLAN["features_per_stage"]),
        "conv_op": nn.Conv3d,
        "kernel_sizes": [list(k) for k in BRATS_PLAN["kernel_sizes"]],
        "strides": [list(s) for s in BRATS_PLAN["strides"]],
        "n_conv_per_stage": list(BRATS_PLAN["n_conv_per_stage"]),
        "num_classes": 3,
        "n_conv_per_stage_decoder": list(BRATS_PLAN["n_conv_per_stage_decoder"]),
        "conv_bias": True,
        "norm_op": nn.InstanceNorm3d,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "nonlin": nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},
        "deep_supervision": True,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--segmamba", type=Path, required=True, help="local copy of model_segmamba/segmamba.py")
    ap.add_argument("--umamba-bot", type=Path, required=True, help="local copy of UMambaBot_3d.py")
    ap.add_argument("--umamba-enc", type=Path, required=True, help="local copy of UMambaEnc_3d.py")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "Testing/data/official_keys")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    _install_stand_in()

    seg = _load(args.segmamba, "official_segmamba")
    for out_chans in (3, 4):
        cfg = {"in_chans": 4, "out_chans": out_chans, "depths": [2, 2, 2, 2], "feat_size": [48, 96, 192, 384],
               "hidden_size": 768}
        _dump(seg.SegMamba(**cfg), args.out / f"segmamba_in4_out{out_chans}.json",
              "ge-xing/SegMamba model_segmamba/segmamba.py", cfg)

    bot = _load(args.umamba_bot, "official_umamba_bot")
    _dump(bot.UMambaBot(**_umamba_kwargs()), args.out / "umambabot_brats128_ds.json",
          "bowang-lab/U-Mamba umamba/nnunetv2/nets/UMambaBot_3d.py", {**BRATS_PLAN, "in": 4, "heads": 3, "ds": True})
    enc = _load(args.umamba_enc, "official_umamba_enc")
    _dump(enc.UMambaEnc(input_size=[128, 128, 128], **_umamba_kwargs()), args.out / "umambaenc_brats128_ds.json",
          "bowang-lab/U-Mamba umamba/nnunetv2/nets/UMambaEnc_3d.py",
          {**BRATS_PLAN, "in": 4, "heads": 3, "ds": True, "input_size": [128, 128, 128]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
