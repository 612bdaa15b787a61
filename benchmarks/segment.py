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
    python benchmarks/segment.py --case DIR --configs bf16:contiguous bf16:channels_last bf16-cast:channels_last

Our timings per stage (seconds, median of --repeats): read | preprocess | inference | postprocess |
write, total_excluding_io = preprocess + inference + postprocess, total. --configs times several
speed settings (precision, memory format, torch.compile, tiles per forward) against one stock run.
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
from envvars import set_env  # noqa: E402

from BraTSMambaLib.ssm.selective_scan import ENV_VAR as SCAN_ENV  # noqa: E402


def build_package(name: str, out: Path, patch: tuple[int, int, int], tiny: bool = False) -> Path:
    """A package of registry network `name` with random weights (full size, or its tiny configuration)."""
    from BraTSMambaLib.inference.package import save_package
    from BraTSMambaLib.nets import build_model, get_spec

    torch.manual_seed(0)
    overrides = {k: v for k, v in get_spec(name).tiny.items() if k != "patch_size"} if tiny else {}
    net = build_model(name, patch_size=patch, **overrides)
    return save_package(out / name, name, [net.state_dict()], patch_size=patch, overrides=overrides,
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
    """nnU-Net's own predictor, in memory (no disk), same weights and settings, on a fresh fp32 NCDHW
    copy of the network (ours are cast/re-laid-out/compiled in place by the predictor)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pm, cm, dj = model.plans
    net = model.package.build_networks(model.device)[0]
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
    del pred, net
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


def parse_config(text: str) -> dict:
    """'PRECISION[:MEMORY_FORMAT[:COMPILE[:TILES_PER_FORWARD[:COMPILE_SCOPE[:SCAN_BACKEND]]]]]' -> SegmentOptions
    fields and the scan backend ('-' or empty keeps the default), e.g. bf16:channels_last,
    bf16-cast:channels_last:default:16, bf16:channels_last::::triton."""
    from BraTSMambaLib.inference.predictor import COMPILE_MODES, COMPILE_SCOPES, MEMORY_FORMATS, PRECISIONS
    from BraTSMambaLib.ssm.selective_scan import BACKENDS

    parts = (text.split(":") + [""] * 6)[:6]
    if len(text.split(":")) > 6:
        raise argparse.ArgumentTypeError(f"--configs {text}: at most 6 fields")
    out = {}
    for key, value, choices in (("precision", parts[0], PRECISIONS), ("memory_format", parts[1], MEMORY_FORMATS),
                                ("compile", parts[2], COMPILE_MODES), ("tiles_per_forward", parts[3], None),
                                ("compile_scope", parts[4], COMPILE_SCOPES), ("scan_backend", parts[5], BACKENDS)):
        if value in ("", "-"):
            continue
        if choices is None:
            if not value.isdigit() or int(value) < 1:
                raise argparse.ArgumentTypeError(f"--configs {text}: tiles per forward must be a positive integer")
            out[key] = int(value)
        elif value not in choices:
            raise argparse.ArgumentTypeError(f"--configs {text}: {key} {value!r} not one of {', '.join(choices)}")
        else:
            out[key] = value
    return out


def stage_breakdown(case, model, repeats: int = 2) -> dict:
    """Seconds (best of `repeats`) of the CPU-side pieces of preprocess and postprocess on this case:
    nnU-Net's nonzero mask (binary_fill_holes) and crop on the whole volume and inside the nonzero box
    (as the pipeline runs it on a CPU), the whole preprocessing (and on a GPU the pipeline's
    `preprocess_on_device`), labelling a probability map that starts on the
    model's device (as the predictor leaves it; `postprocess_total`), and the full-size pieces
    (restore, threshold, label map, regions, volumes) that only --save-probabilities still needs."""
    import SimpleITK as sitk
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask, crop_to_nonzero

    from BraTSMambaLib.data import conventions as C
    from BraTSMambaLib.inference import postprocessing as P
    from BraTSMambaLib.inference.pipeline import labels_on_input_grid
    from BraTSMambaLib.inference.preprocessing import nonzero_box, preprocess, restore

    pm, cm, dj = model.plans
    data = case.array()
    spacing_zyx = tuple(reversed(case.reference.GetSpacing()))
    spacing_xyz = tuple(case.reference.GetSpacing())
    out: dict = {}

    def best(key, fn):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = fn()
            _sync(model.device)
            times.append(time.perf_counter() - t0)
        out[key] = round(min(times), 4)
        return res

    best("case_array_stack", case.array)  # no longer in the pipeline (it preprocesses the images' own arrays)
    best("nonzero_mask_fill_holes_whole_volume", lambda: create_nonzero_mask(data))
    best("crop_to_nonzero_whole_volume", lambda: crop_to_nonzero(data.copy(), None))
    channels = [sitk.GetArrayViewFromImage(case.images[k]) for k in C.MODALITIES]
    box = best("nonzero_box", lambda: nonzero_box(channels, margin=0))
    best("crop_to_nonzero_in_box", lambda: crop_to_nonzero(np.stack([c[box] for c in channels]).astype(np.float32)))
    best("preprocess_from_stack", lambda: preprocess(data, spacing_zyx, pm, cm, dj))
    pre, props = best("preprocess_total", lambda: preprocess(channels, spacing_zyx, pm, cm, dj))  # nnU-Net, CPU
    if model.device.type == "cuda":   # what the pipeline runs on a GPU (device_preprocessing)
        from BraTSMambaLib.inference.device_preprocessing import preprocess_on_device

        best("preprocess_on_device", lambda: preprocess_on_device(channels, spacing_zyx, pm, cm, model.device))
    prob = torch.rand((3, *pre.shape[1:]), generator=torch.Generator().manual_seed(0)).to(model.device)
    best("postprocess_total", lambda: labels_on_input_grid(prob, props, model.plans, "2021"))  # as the pipeline
    # the rest: full-size probabilities, only built with --save-probabilities now
    full = best("restore_incl_device_to_host", lambda: restore(prob, props, pm, cm, dj))
    labels = best("threshold_and_label_map", lambda: P.label_map(P.region_masks(full), "2021"))
    regions = best("consistent_regions", lambda: P.consistent_regions(labels, "2021"))
    best("volumes", lambda: P.volumes_ml(regions, labels, spacing_xyz, "2021"))
    out["cropped_shape"] = list(pre.shape[1:])
    return out


def config_from_variant(variant: str, batch: int) -> dict:
    """The pipeline settings of a benchmarks/forward_gpu.py variant (a CUDA graph has no pipeline
    equivalent: its eager base is used), with tiles per forward = the variant's batch."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from forward_gpu import BASES, parse_variant

    base, suffix = parse_variant(variant)
    precision, channels_last = BASES[base]
    cfg = {"precision": precision, "memory_format": "channels_last" if channels_last else "contiguous",
           "tiles_per_forward": int(batch)}
    if suffix in ("_compile", "_compileconvs"):
        cfg.update(compile="default", compile_scope="whole" if suffix == "_compile" else "convs")
    return cfg


def scan_backend(device: str) -> str:
    """The scan backend the networks will use on `device` (what auto resolves to, or the forced one), with
    the one auto takes for long inference sequences where that differs."""
    from BraTSMambaLib.inference.predictor import resolve_device
    from BraTSMambaLib.ssm import resolve_backend
    from BraTSMambaLib.ssm.selective_scan import LONG_SEQUENCE

    dev = resolve_device(device)
    short, long = resolve_backend("auto", dev), resolve_backend("auto", dev, length=LONG_SEQUENCE)
    return short if short == long else f"{long} (L >= {LONG_SEQUENCE}) / {short}"


def best_configs(path: str, name: str) -> list[dict]:
    """The fastest forward_gpu.py variant of network `name` in its JSON (rows without errors), as settings."""
    try:
        rows = json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError) as e:
        print(f"--best-from {path}: not usable ({type(e).__name__}: {e}); skipped", flush=True)
        return []
    mine = [r for r in rows if r.get("model") == name and "ms_per_tile" in r and r.get("batch", 0) >= 8]
    if not mine:
        return []
    best = min(mine, key=lambda r: r["ms_per_tile"])
    print(f"[{name}] fastest forward in {path}: {best['variant']} batch {best['batch']} "
          f"({best['ms_per_tile']:.2f} ms/tile)", flush=True)
    return [config_from_variant(best["variant"], best["batch"])]


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


def build_parser() -> argparse.ArgumentParser:
    from BraTSMambaLib.inference.predictor import COMPILE_MODES, COMPILE_SCOPES, MEMORY_FORMATS, PRECISIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default=None, help="BraTS case folder (default: a generated 240x240x155 phantom)")
    p.add_argument("--models", nargs="+", default=["segmamba", "umambabot"])
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", type=int, default=8)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--fast", action="store_true", help="the CLI's --fast settings (tta 1, overlap 0.25)")
    p.add_argument("--patch", type=int, nargs=3, default=(128, 128, 128))
    p.add_argument("--tiles-per-forward", type=int, default=None)
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="as `segment --precision`")
    p.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto", help="as `segment --memory-format`")
    p.add_argument("--compile", choices=COMPILE_MODES, default="off", help="as `segment --compile`")
    p.add_argument("--compile-scope", choices=COMPILE_SCOPES, default="whole", help="as `segment --compile-scope`")
    p.add_argument("--configs", nargs="+", type=parse_config, default=None,
                   metavar="PREC[:FORMAT[:COMPILE[:TPF[:SCOPE]]]]",
                   help="time our pipeline once per config (e.g. bf16:contiguous bf16:channels_last "
                        "bf16-cast:channels_last:default:8); fields left out take the flags above; the stock "
                        "predictor runs once per model")
    p.add_argument("--tiny", action="store_true",
                   help="the registry's tiny network configurations (dry runs of the benchmark on a CPU)")
    p.add_argument("--best-from", default=None, metavar="FORWARD_JSON",
                   help="also time the fastest variant (batch >= 8) per network of a benchmarks/forward_gpu.py "
                        "--json file, as pipeline settings")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (cuDNN autotune, kernel compiles)")
    p.add_argument("--no-stock", action="store_true", help="skip nnU-Net's stock predictor")
    p.add_argument("--cudnn-benchmark-limit", type=int, default=None, metavar="N",
                   help="torch.backends.cudnn.benchmark_limit: algorithms cuDNN's autotuner tries per convolution "
                        "(PyTorch's default 10; 0 = all)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--compare-sliding-window", type=int, default=None, metavar="SIZE",
                   help="only time the sliding window on a random SIZE^3 volume, ours vs stock, interleaved")
    return p


def run_config(name: str, pkg: Path, case_dir: Path, tmp: Path, opts, args, results: dict, entry: dict):
    """Load the package with `opts`, warm up, time our pipeline; (model, result row)."""
    from BraTSMambaLib.inference.pipeline import load_model

    model = load_model(pkg, opts)
    dev = str(model.device) + (f" ({torch.cuda.get_device_name(model.device)})"
                               if model.device.type == "cuda" else "")
    results["device"] = dev
    entry["params"] = sum(p.numel() for p in model.predictor.networks[0].parameters())
    settings = model.predictor.settings
    print(f"[{name}] {dev}, scan backend {scan_backend(args.device)}, tta {args.tta}, overlap {args.overlap}, "
          f"{settings}, load+verify {model.load_seconds:.2f} s", flush=True)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        time_ours(case_dir, model, tmp / "out", opts, 1)
    warm_s = time.perf_counter() - t0
    ours = time_ours(case_dir, model, tmp / "out", opts, args.repeats)
    row = {"settings": settings, "timings_s": ours, "load_s": model.load_seconds, "warmup_s": round(warm_s, 2)}
    print(f"  ours : {ours['total_excluding_io']:.3f} s without disk I/O (preprocess {ours['preprocess']:.3f}, "
          f"inference {ours['inference']:.3f}, postprocess {ours['postprocess']:.3f}); "
          f"disk: read {ours['read']:.3f}, write {ours['write']:.3f}; warm-up {warm_s:.1f} s", flush=True)
    return model, row


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare_sliding_window:
        if args.fast:
            args.tta, args.overlap = 1, 0.25
        for name in args.models:
            compare_sliding_window(name, tuple(args.patch), args.compare_sliding_window, args.overlap, args.tta,
                                   args.device, args.repeats)
        return 0

    from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model

    if args.cudnn_benchmark_limit is not None:
        torch.backends.cudnn.benchmark_limit = args.cudnn_benchmark_limit
    if args.fast:
        args.tta, args.overlap = 1, 0.25
    tmp = Path(tempfile.mkdtemp(prefix="brats-bench-"))
    case_dir, case, source = load_input(args.case, tmp)
    base = dict(precision=args.precision, memory_format=args.memory_format, compile=args.compile,
                compile_scope=args.compile_scope, tiles_per_forward=args.tiles_per_forward)
    configs = [{**base, **c} for c in (args.configs or [{}])]
    results = {"input": source, "shape_xyz": list(case.reference.GetSize()), "tta": args.tta,
               "overlap": args.overlap, "patch": list(args.patch), "torch": torch.__version__,
               "scan_backend": scan_backend(args.device),
               "cudnn_benchmark_limit": torch.backends.cudnn.benchmark_limit,
               "host": f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cores",
               "models": {}}
    for name in args.models:
        pkg = build_package(name, tmp / "packages", tuple(args.patch), args.tiny)
        entry: dict = {"ours": []}
        model = None
        mine = list(configs)
        def key(c: dict) -> dict:  # tiles per forward None = the CUDA default, 8
            return {**c, "tiles_per_forward": c.get("tiles_per_forward") or 8}

        for cfg in best_configs(args.best_from, name) if args.best_from else []:
            if key({**base, **cfg}) not in [key(c) for c in mine]:
                mine.append({**base, **cfg})
        for cfg in mine:
            cfg = dict(cfg)
            scan = cfg.pop("scan_backend", None)
            opts = SegmentOptions(device=args.device, fast=args.fast, tta=args.tta, overlap=args.overlap, overwrite=True,
                                  **cfg)
            try:
                with set_env({SCAN_ENV: scan} if scan else None):
                    model, row = run_config(name, pkg, case_dir, tmp, opts, args, results, entry)
            except Exception as e:  # noqa: BLE001 - one config failing must not lose the others
                row = {"settings": cfg, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
                print(f"  ours {cfg}: FAILED {row['error']}", flush=True)
            if scan:
                row["scan_backend"] = scan
            entry["ours"].append(row)
            if len(mine) > 1 or args.no_stock:
                model = _release(model) if model is not None else None
        try:
            stages_model = model or load_model(pkg, SegmentOptions(device=args.device, tta=1, precision="fp32",
                                                                   memory_format="contiguous"))
            entry["cpu_stage_breakdown_s"] = stage_breakdown(case, stages_model)
            print(f"  CPU-side pieces (best of 2, s): {entry['cpu_stage_breakdown_s']}", flush=True)
            if stages_model is not model:
                _release(stages_model)
        except Exception as e:  # noqa: BLE001
            entry["cpu_stage_breakdown_s"] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
            print(f"  CPU-side pieces FAILED: {entry['cpu_stage_breakdown_s']['error']}", flush=True)
        if not args.no_stock:
            try:
                if model is None:
                    model = load_model(pkg, SegmentOptions(device=args.device, tta=args.tta, overlap=args.overlap,
                                                           precision="fp32", memory_format="contiguous"))
                for _ in range(args.warmup):
                    time_stock(case, model, args.tta, args.overlap, 1)
                stock = time_stock(case, model, args.tta, args.overlap, args.repeats)
                entry["stock_nnunet"] = stock
                print(f"  stock nnUNetPredictor: {stock['total_excluding_io']:.3f} s", flush=True)
                for row in entry["ours"]:
                    if "timings_s" in row:
                        row["speedup_vs_stock"] = stock["total_excluding_io"] / row["timings_s"]["total_excluding_io"]
                        print(f"  ours {row['settings']} scan {row.get('scan_backend', 'auto')}: {row['timings_s']['total_excluding_io']:.3f} s -> "
                              f"{row['speedup_vs_stock']:.2f}x faster than stock", flush=True)
            except Exception as e:  # noqa: BLE001
                entry["stock_nnunet"] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
                print(f"  stock nnUNetPredictor FAILED: {entry['stock_nnunet']['error']}", flush=True)
            model = _release(model) if model is not None else None
        results["models"][name] = entry
        if args.json:  # after every model, so a later failure keeps what was measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return 0


def _release(model) -> None:
    """Drop a loaded model and give its GPU memory back (and Dynamo's compiled code)."""
    model.predictor.networks.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        from torch import _dynamo

        _dynamo.reset()
    except Exception:  # noqa: BLE001, S110 - Dynamo may be unusable here; nothing to reset then
        pass


if __name__ == "__main__":
    sys.exit(main())
