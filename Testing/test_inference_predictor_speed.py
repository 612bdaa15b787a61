"""Speed settings of the sliding-window predictor (precision, memory format, torch.compile) on CPU:
the new code paths give the default path's predictions, fp32 islands stay fp32, flags parse."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.inference import predictor as PR
from BraTSMambaLib.inference.networks import cast_network, compile_network
from BraTSMambaLib.nets import build_model, get_spec

CPU = torch.device("cpu")


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, **get_spec(name).tiny).eval()


def volume(shape) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, *shape)).astype(np.float32)


def predict(name: str, data: np.ndarray, **settings) -> torch.Tensor:
    net = tiny(name)
    patch = get_spec(name).tiny["patch_size"]
    return PR.SlidingWindowPredictor([net], patch, CPU, overlap=0.5, tta=2, **settings).predict(data)


CASES = [("segmamba", (40, 36, 34)), ("umambabot", (12, 10, 9))]


@pytest.mark.parametrize("name,shape", CASES)
def test_channels_last_gives_the_default_prediction(name, shape):
    data = volume(shape)
    ref = predict(name, data)
    cl = predict(name, data, memory_format="channels_last")
    assert ref.shape == cl.shape == (3, *shape)
    torch.testing.assert_close(cl, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,shape", CASES)
def test_bf16_cast_is_close_to_fp32(name, shape):
    data = volume(shape)
    ref = predict(name, data)
    for settings in ({"precision": "bf16-cast"}, {"precision": "bf16-cast", "memory_format": "channels_last"},
                     {"precision": "bf16"}):
        out = predict(name, data, **settings)
        assert out.dtype == torch.float32 and out.shape == ref.shape
        diff = (out - ref).abs()
        assert float(diff.max()) < 0.05 and float(diff.mean()) < 0.01, settings
        assert not torch.equal(out, ref)  # the weights really ran in bf16


def test_cast_keeps_fp32_islands():
    net = cast_network(tiny("umambabot"), torch.bfloat16)
    island = net.mamba_layer
    assert all(p.dtype == torch.float32 for p in island.parameters())
    assert next(net.encoder.parameters()).dtype == torch.bfloat16
    x = torch.randn(1, 4, 8, 8, 8, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert net(x).dtype == torch.bfloat16  # the island's fp32 output is cast back for the decoder
    seg = cast_network(tiny("segmamba"), torch.bfloat16)
    for name, p in seg.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        scan_param = ".mamba." in name and (leaf.startswith("A") and leaf.endswith("_log") or leaf.startswith("D"))
        assert p.dtype == (torch.float32 if scan_param else torch.bfloat16), name


def test_cpu_defaults_unchanged_and_cuda_defaults():
    p = PR.SlidingWindowPredictor([tiny("umambabot")], (8, 8, 8), CPU, tta=1)
    assert p.settings["precision"] == "fp32" and p.settings["memory_format"] == "contiguous"
    assert p.dtype is None and p.input_dtype == torch.float32 and p.compile == "off"
    assert next(p.networks[0].parameters()).dtype == torch.float32
    from BraTSMambaLib.nets.fused import kernels_available

    expected = PR.CUDA_DEFAULTS["memory_format"] if kernels_available() else "contiguous"
    assert PR.resolve_memory_format(torch.device("cuda"), "auto") == expected
    assert PR.resolve_memory_format(CPU, "auto") == "contiguous"
    assert PR.autocast_dtype(CPU, "auto") is None and PR.autocast_dtype(CPU, "bf16") == torch.bfloat16
    assert PR.autocast_dtype(torch.device("mps"), "bf16") is None


@pytest.mark.parametrize("native", [True, False])
def test_fast_on_cpu_takes_bf16_only_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr(PR, "cpu_has_native_bf16", lambda: native)
    assert PR.resolve_precision(CPU, "auto", fast=True) == ("bf16" if native else "fp32")
    assert PR.resolve_precision(CPU, "auto") == "fp32"               # the full-quality default stays fp32
    assert PR.resolve_precision(CPU, "fp32", fast=True) == "fp32"    # an explicit choice wins
    assert PR.resolve_precision(torch.device("mps"), "auto", fast=True) == "fp32"
    cuda = torch.device("cuda")
    assert PR.resolve_precision(cuda, "auto", fast=True) == PR.resolve_precision(cuda, "auto")  # fast: CPU only


def test_fast_segment_options_reach_the_predictor(monkeypatch):
    from BraTSMambaLib.inference.package import open_package
    from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model

    monkeypatch.setattr(PR, "cpu_has_native_bf16", lambda: True)
    demo = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "demo"
    model = load_model(open_package(demo), SegmentOptions(device="cpu", fast=True))
    assert model.predictor.settings["precision"] == "bf16" and model.predictor.dtype == torch.bfloat16
    model = load_model(open_package(demo), SegmentOptions(device="cpu"))
    assert model.predictor.settings["precision"] == "fp32" and model.predictor.dtype is None


def test_fp16_autocast_refused_off_cuda():
    with pytest.raises(BraTSInputError, match="fp16.*CUDA"):
        PR.SlidingWindowPredictor([tiny("umambabot")], (8, 8, 8), CPU, tta=1, precision="fp16")


def test_cuda_auto_layout_falls_back_to_ncdhw_without_the_kernels(monkeypatch):
    from BraTSMambaLib.nets.fused import blocks

    monkeypatch.setitem(blocks._MODULES, "norm_kernels", None)   # as where triton does not import
    assert PR.resolve_memory_format(torch.device("cuda"), "auto") == "contiguous"
    assert PR.resolve_memory_format(torch.device("cuda"), "channels_last") == "channels_last"
    assert PR.cast_dtype(CPU, "bf16-cast") == torch.bfloat16


@pytest.mark.parametrize("field,value", [("precision", "int8"), ("memory_format", "nhwc"), ("compile", "fast"),
                                         ("compile_scope", "half")])
def test_bad_settings_refused(field, value):
    with pytest.raises(BraTSInputError, match=value):
        PR.SlidingWindowPredictor([tiny("umambabot")], (8, 8, 8), CPU, tta=1, **{field: value})


def test_compile_convs_scope_leaves_scans_eager():
    net = compile_network(tiny("segmamba"), "default", "convs")
    compiled = {n for n, m in net.named_modules() if getattr(m, "_compiled_call_impl", None) is not None}
    assert "encoder1" in compiled and "decoder1" in compiled and "vit.gscs" in compiled
    assert not any("stages" in n and "norm" not in n for n in compiled)
    assert "" not in compiled and "vit" not in compiled
    whole = compile_network(tiny("umambabot"), "default", "whole")
    assert whole._compiled_call_impl is not None
    assert set(whole.state_dict()) == set(tiny("umambabot").state_dict())  # keys unchanged


def test_segment_flags_reach_the_options():
    from BraTSMambaLib.commands import segment

    p = argparse.ArgumentParser()
    segment.configure(p)
    args = p.parse_args(["--case", "x", "-o", "y", "--precision", "bf16-cast", "--memory-format", "channels_last",
                         "--compile", "max-autotune-no-cudagraphs", "--compile-scope", "convs"])
    opts = segment.options_from(args)
    assert (opts.precision, opts.memory_format, opts.compile, opts.compile_scope) == \
        ("bf16-cast", "channels_last", "max-autotune-no-cudagraphs", "convs")
    defaults = segment.options_from(p.parse_args(["--case", "x", "-o", "y"]))
    assert (defaults.precision, defaults.memory_format, defaults.compile) == ("auto", "auto", "off")
    with pytest.raises(SystemExit):
        p.parse_args(["--case", "x", "-o", "y", "--memory-format", "nhwc"])


def test_benchmark_settings_parse():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import forward_gpu
    import segment as bench

    assert bench.parse_config("bf16-cast:channels_last:default:16:convs") == {
        "precision": "bf16-cast", "memory_format": "channels_last", "compile": "default", "tiles_per_forward": 16,
        "compile_scope": "convs"}
    assert bench.parse_config("bf16") == {"precision": "bf16"}
    assert bench.parse_config("bf16:channels_last::::cuda") == {
        "precision": "bf16", "memory_format": "channels_last", "scan_backend": "cuda"}
    for bad in ("int8", "bf16:nhwc", "bf16:-:-:zero", "bf16:::::fast", "bf16::::::x"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_config(bad)
    assert bench.config_from_variant("autocast_cl_compile", 8) == {
        "precision": "bf16", "memory_format": "channels_last", "tiles_per_forward": 8, "compile": "default",
        "compile_scope": "whole"}
    assert bench.config_from_variant("bf16_cl_graph", 16)["precision"] == "bf16-cast"
    assert forward_gpu.parse_variant("bf16_cl_compileconvs") == ("bf16_cl", "_compileconvs")
    with pytest.raises(ValueError):
        forward_gpu.parse_variant("fp8_cl")
