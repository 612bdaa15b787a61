"""Benchmark: one whole 240x240x155 case end to end, our pipeline vs nnU-Net's stock nnUNetPredictor.

For each network (default SegMamba and UMambaBot, full BraTS size, random weights: speed does not
depend on the weight values) it
  1. writes a model package (real safetensors + sha256, as users get them) and loads it,
  2. times `segment_case` (read | preprocess, sliding window, restore + labels | write) with the given
     TTA and overlap, disk I/O reported separately,
  3. times nnU-Net's `nnUNetPredictor.predict_single_npy_array` (stock preprocessing, sliding window,
     mirroring, export) with the SAME network object, weights, plans, overlap and mirror axes,
and prints both and their ratio. Self-contained: needs only this repository and, for the input, a
BraTS case folder (--case) or nothing (a 240x240x155 phantom is generated).

    python benchmarks/segment.py                              # CUDA if present: tta 8, overlap 0.5
    python benchmarks/segment.py --device cpu --fast --no-stock --models umambabot segmamba
    python benchmarks/segment.py --case ../shared/data/brats2018/Brats18_2013_11_1 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def build_package(name: str, out: Path, patch: tuple[int, int, int]) -> Path:
    from BraTSMambaLib.inference.package import save_package
    from BraTSMambaLib.nets import build_model

    torch.manual_seed(0)
    net = build_model(name, patch_size=patch)
    return save_package(out / name, name, [net.state_dict()], patch_size=patch,
                        description="random weights, benchmark only", overwrite=True)


def time_ours(case_dir: Path, model, out: Path, opts, repeats: int) -> dict:
    """Our pipeline from the case folder (so reading is timed too) to the written outputs."""
    from BraTSMambaLib.inference.pipeline import segment_case

    runs = []
    for _ in range(repeats):
        res = segment_case(case_dir, model, out, opts)
        runs.append(res.report["timings_s"])
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def time_stock(case, model, tta: int, overlap: float, repeats: int) -> dict:
    """nnU-Net's own predictor, in memory (no disk), same network and settings."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pm, cm, dj = model.plans
    net = model.predictor.networks[0]
    pred = nnUNetPredictor(tile_step_size=1.0 - overlap, use_gaussian=True, use_mirroring=tta > 1,
                           perform_everything_on_device=model.device.type == "cuda", device=model.device,
                           verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    axes = model.package.mirror_axes if tta > 1 else None
    pred.manual_initialization(net, pm, cm, [{k: v for k, v in net.state_dict().items()}], dj,
                               f"nnUNetTrainer{model.package.network_name}", axes)
    data = case.array()
    props = {"spacing": [float(s) for s in reversed(case.reference.GetSpacing())]}
    times = []
    for _ in range(repeats):
        _sync(model.device)
        t0 = time.perf_counter()
        seg = pred.predict_single_npy_array(data, dict(props))
        _sync(model.device)
        times.append(time.perf_counter() - t0)
    assert seg.shape == data.shape[1:]
    return {"total_excluding_io": statistics.median(times), "runs": times}


def compare_sliding_window(name: str, patch: tuple[int, int, int], size: int, overlap: float, tta: int,
                           device: str, rounds: int) -> None:
    """Sliding window alone, ours vs nnU-Net's `predict_sliding_window_return_logits`, interleaved."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from BraTSMambaLib.inference.predictor import SlidingWindowPredictor, resolve_device
    from BraTSMambaLib.inference.preprocessing import equivalent_plans, region_dataset_json
    from BraTSMambaLib.nets import build_model

    dev = resolve_device(device)
    torch.manual_seed(0)
    net = build_model(name, patch_size=patch).to(dev).eval()
    pm = PlansManager(equivalent_plans((1.0, 1.0, 1.0), patch))
    ours = SlidingWindowPredictor([net], patch, dev, overlap=overlap, tta=tta)
    stock = nnUNetPredictor(tile_step_size=1.0 - overlap, use_gaussian=True, use_mirroring=tta > 1,
                            perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                            allow_tqdm=False)
    stock.manual_initialization(net, pm, pm.get_configuration("3d_fullres"), [net.state_dict()],
                                region_dataset_json(), "bench", (0, 1, 2) if tta > 1 else None)
    x = torch.randn(4, size, size, size)
    for r in range(rounds):
        _sync(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            stock.predict_sliding_window_return_logits(x.to(dev))
        _sync(dev)
        t1 = time.perf_counter()
        ours.predict(x)
        _sync(dev)
        print(f"round {r}: stock {t1 - t0:.2f} s, ours {time.perf_counter() - t1:.2f} s", flush=True)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_input(case_dir: str | None, tmp: Path):
    from BraTSMambaLib.data.case import load_case
    from BraTSMambaLib.data.phantom import write_phantom

    if case_dir:
        return Path(case_dir), load_case(case_dir), str(case_dir)
    folder = write_phantom(tmp / "phantom", seed=0)
    return folder, load_case(folder), "phantom 240x240x155 (seed 0)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default=None, help="BraTS case folder (default: a generated 240x240x155 phantom)")
    p.add_argument("--models", nargs="+", default=["segmamba", "umambabot"])
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", type=int, default=8)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--fast", action="store_true", help="the CLI's --fast settings (tta 1, overlap 0.25)")
    p.add_argument("--patch", type=int, nargs=3, default=(128, 128, 128))
    p.add_argument("--tiles-per-forward", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (cuDNN autotune, kernel compiles)")
    p.add_argument("--no-stock", action="store_true", help="skip nnU-Net's stock predictor")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--compare-sliding-window", type=int, default=None, metavar="SIZE",
                   help="only time the sliding window on a random SIZE^3 volume, ours vs stock, interleaved")
    args = p.parse_args(argv)
    if args.compare_sliding_window:
        if args.fast:
            args.tta, args.overlap = 1, 0.25
        for name in args.models:
            compare_sliding_window(name, tuple(args.patch), args.compare_sliding_window, args.overlap, args.tta,
                                   args.device, args.repeats)
        return 0

    from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model

    if args.fast:
        args.tta, args.overlap = 1, 0.25
    tmp = Path(tempfile.mkdtemp(prefix="brats-bench-"))
    case_dir, case, source = load_input(args.case, tmp)
    opts = SegmentOptions(device=args.device, tta=args.tta, overlap=args.overlap, overwrite=True,
                          tiles_per_forward=args.tiles_per_forward)
    results = {"input": source, "shape_xyz": list(case.reference.GetSize()), "tta": args.tta,
               "overlap": args.overlap, "patch": list(args.patch), "torch": torch.__version__,
               "host": f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cores",
               "models": {}}
    for name in args.models:
        pkg = build_package(name, tmp / "packages", tuple(args.patch))
        model = load_model(pkg, opts)
        dev = str(model.device) + (f" ({torch.cuda.get_device_name(model.device)})" if model.device.type == "cuda" else "")
        results["device"] = dev
        backend = os.environ.get("BRATSMAMBA_SCAN_BACKEND", "auto")
        print(f"[{name}] {dev}, scan backend {backend}, tta {args.tta}, overlap {args.overlap}, "
              f"tiles/forward {model.predictor.tiles_per_forward}, load+verify {model.load_seconds:.2f} s", flush=True)
        for _ in range(args.warmup):
            time_ours(case_dir, model, tmp / "out", opts, 1)
        ours = time_ours(case_dir, model, tmp / "out", opts, args.repeats)
        entry = {"ours": ours, "load_s": model.load_seconds,
                 "params": sum(p.numel() for p in model.predictor.networks[0].parameters())}
        print(f"  ours : {ours['total_excluding_io']:.3f} s without disk I/O (preprocess {ours['preprocess']:.3f}, "
              f"inference {ours['inference']:.3f}, postprocess {ours['postprocess']:.3f}); "
              f"disk: read {ours['read']:.3f}, write {ours['write']:.3f}", flush=True)
        if not args.no_stock:
            for _ in range(args.warmup):
                time_stock(case, model, args.tta, args.overlap, 1)
            stock = time_stock(case, model, args.tta, args.overlap, args.repeats)
            entry["stock_nnunet"] = stock
            entry["speedup"] = stock["total_excluding_io"] / ours["total_excluding_io"]
            print(f"  stock nnUNetPredictor: {stock['total_excluding_io']:.3f} s -> ours is "
                  f"{entry['speedup']:.2f}x faster", flush=True)
        results["models"][name] = entry
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
