"""`brats-mamba segment`: segment one case, four files, or every case below a folder."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "segment"
HELP = "segment a case (or a folder of cases) into WT/TC/ET with a trained model package"
DESCRIPTION = """\
Segment brain tumours into whole tumour (WT), tumour core (TC) and enhancing tumour (ET).

Input: a case folder (--case; BraTS 2021 <case>_t1.nii.gz... or 2023 <case>-t1n.nii.gz... names),
four files (--t1 --t1ce --t2 --flair), or every case folder below --batch.
Outputs in OUT, in the input geometry: <case>_seg.nii.gz (label map), <case>.seg.nrrd (three
overlapping segments for 3D Slicer), <case>_volumes.json (mL per region, model, device, timings),
optionally <case>_probabilities.nii.gz and <case>_overlay.png.

--model takes a catalogue name (see `brats-mamba models`), a model package folder or .zip, or an
nnU-Net v2 results folder (plans.json, dataset.json, fold_*/checkpoint_final.pth). Default: the
bundled demo model.

Progress: tqdm bars on stderr; with --progress-json (or the environment variable
BRATSMAMBA_PROGRESS=json, which the 3D Slicer module sets) one flushed line per step instead,
`@@brats-mamba-progress {"stage": ..., "fraction": 0..1, "message": ...}`, stages load, preprocess,
inference (per sliding-window pass), postprocess, write, done (format: BraTSMambaLib.progress).

Batch mode skips cases whose outputs are complete, continues past broken cases and lists them at the
end (exit status 1 if any failed). Several GPUs: `torchrun --nproc_per_node=N -m BraTSMambaLib.cli
segment --batch DIR -o OUT` gives each rank every N-th case.
"""


def configure(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("input (one of)")
    src.add_argument("--case", metavar="DIR", help="case folder with the four modalities (and optionally seg)")
    src.add_argument("--batch", metavar="DIR", help="segment every case folder below DIR")
    for m in ("t1", "t1ce", "t2", "flair"):
        src.add_argument(f"--{m}", metavar="FILE", help=f"{m.upper() if m != 't1ce' else 'T1ce'} image")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if missing)")
    p.add_argument("--model", metavar="NAME|PACKAGE|NNUNET_DIR", default=None,
                   help="catalogue name, model package (folder or .zip) or nnU-Net results folder (default: demo)")
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--fast", action="store_true",
                   help="no test-time augmentation and overlap 0.25, and bf16 on a CPU with native bf16 "
                        "(AVX512-BF16 or AMX): several times faster, slightly less accurate")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap in [0, 1) (default 0.5)")
    p.add_argument("--tta", type=int, default=None, help="mirror test-time augmentation: 1 (off) to 8 flips (default 8)")
    p.add_argument("--tiles-per-forward", type=int, default=None,
                   help="network inputs per forward pass (tiles x flips; default 8 on CUDA, 1 elsewhere)")
    from BraTSMambaLib.inference.predictor import COMPILE_MODES, COMPILE_SCOPES, MEMORY_FORMATS, PRECISIONS

    speed = p.add_argument_group("speed (CUDA; on CPU only --precision applies; MPS runs fp32, contiguous, eager)")
    speed.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto (CUDA: bf16 autocast; CPU: fp32, or bf16 with --fast where the CPU has native "
                            "bf16), fp32, bf16 (autocast, CUDA or CPU), fp16 (autocast, CUDA only), "
                            "bf16-cast/fp16-cast (weights and inputs cast, no autocast)")
    speed.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                       help="tensor layout of the 3-D convolutions: auto (CUDA: channels_last, with instance "
                            "norms, residual adds and activations fused into Triton passes; elsewhere contiguous), "
                            "contiguous (NCDHW), channels_last (NDHWC)")
    speed.add_argument("--compile", choices=COMPILE_MODES, default="off",
                       help="torch.compile the network with this mode (compiling takes a while on the first "
                            "case; pays off for batches)")
    speed.add_argument("--compile-scope", choices=COMPILE_SCOPES, default="whole",
                       help="with --compile: the whole network, or only its parts without Mamba layers")
    p.add_argument("--labels", choices=("2021", "2023"), default="2021",
                   help="label values of the output map: 2021 {0,1,2,4} or 2023 {0,1,2,3} (default 2021)")
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>_probabilities.nii.gz")
    p.add_argument("--overlay", action="store_true", help="also write <case>_overlay.png (three views)")
    p.add_argument("--evaluate", action="store_true",
                   help="score against the case's own label map (<case>_seg, when present) and add Dice/HD95 "
                        "to the report")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (and redo finished cases)")
    p.add_argument("--json", action="store_true", help="print the report(s) as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--progress-json", action="store_true",
                   help="machine-readable progress lines instead of bars (also: BRATSMAMBA_PROGRESS=json); "
                        "on stdout, on stderr with --json")


def options_from(args: argparse.Namespace):
    from BraTSMambaLib.inference.pipeline import SegmentOptions

    return SegmentOptions(
        device=args.device, fast=args.fast, overlap=args.overlap, tta=args.tta, labels=args.labels,
        tiles_per_forward=args.tiles_per_forward, precision=args.precision, memory_format=args.memory_format,
        compile=args.compile, compile_scope=args.compile_scope, save_probabilities=args.save_probabilities,
        overlay=args.overlay, evaluate=args.evaluate, overwrite=args.overwrite)


def _input(args: argparse.Namespace):
    from BraTSMambaLib.errors import BraTSInputError

    files = {m: getattr(args, m) for m in ("t1", "t1ce", "t2", "flair") if getattr(args, m)}
    chosen = [n for n, v in (("--case", args.case), ("--batch", args.batch), ("four files", files)) if v]
    if len(chosen) != 1:
        raise BraTSInputError("give exactly one input: --case DIR, --batch DIR, or --t1 --t1ce --t2 --flair "
                              f"(got {', '.join(chosen) or 'none'})")
    if files and len(files) != 4:
        missing = [f"--{m}" for m in ("t1", "t1ce", "t2", "flair") if m not in files]
        raise BraTSInputError(f"four files needed; missing {', '.join(missing)}")
    return args.case or files or None


def print_case(report: dict, out=None) -> None:
    """One line of volumes and timings (and Dice/HD95 when evaluated)."""
    out = out or sys.stdout
    vols = ", ".join(f"{r} {v:.1f} mL" for r, v in report["regions_ml"].items())
    t = report["timings_s"]
    print(f"{report['case']}: {vols} | {t['total_excluding_io']:.1f} s without disk I/O "
          f"(preprocess {t.get('preprocess', 0):.1f}, inference {t.get('inference', 0):.1f}, "
          f"postprocess {t.get('postprocess', 0):.1f}; read {t.get('read', 0):.1f}, write {t.get('write', 0):.1f})",
          file=out)
    if "evaluation" in report and report["evaluation"] is None:
        print("  not evaluated: the case has no label map (<case>_seg)", file=out)
    elif "evaluation" in report:
        ev = report["evaluation"]
        print("  Dice " + ", ".join(f"{r} {ev[r]['dice']:.3f}" for r in ev) + " | HD95 "
              + ", ".join(f"{r} {ev[r]['hd95']:.1f} mm" for r in ev), file=out)


def run(args: argparse.Namespace) -> int:
    from BraTSMambaLib.inference.pipeline import load_model, rank_and_world, segment_batch, segment_case
    from BraTSMambaLib.inference.outputs import output_paths, check_targets
    from BraTSMambaLib.progress import JsonLinesReporter, json_progress_requested, stage_fraction

    source = _input(args)
    options = options_from(args)
    out = Path(args.output)
    if not args.batch and not isinstance(source, dict):
        from BraTSMambaLib.data.case import find_case_files

        case_id, _, _ = find_case_files(source)
        check_targets(output_paths(out, case_id, probabilities=options.save_probabilities,
                                   overlay=options.overlay), options.overwrite)
    log = sys.stderr if args.json else sys.stdout
    report = JsonLinesReporter(log) if (args.progress_json or json_progress_requested()) else None
    bars = not args.no_progress and report is None
    if report:
        report("load", stage_fraction("load"), f"loading model {args.model or 'demo'}")
    model = load_model(args.model, options)
    print(f"model {model.package.describe()} on {model.device} ({model.predictor.precision}), overlap "
          f"{model.predictor.overlap}, {len(model.predictor.flips)} flip(s), loaded in {model.load_seconds:.1f} s",
          file=log)
    if not args.batch:
        model.predictor.progress = bars
        result = segment_case(source, model, out, options, on_progress=report)
        print(json.dumps(result.report, indent=2)) if args.json else print_case(result.report)
        print(f"wrote {', '.join(str(p) for p in result.paths.values())}", file=log)
        if report:
            report("done", 1.0, result.case_id)
        return 0
    res = segment_batch(args.batch, model, out, options, progress=bars, on_progress=report)
    rank, world = rank_and_world()
    who = f"rank {rank}/{world}: " if world > 1 else ""
    summary = {"done": res.done, "skipped": res.skipped, "failed": res.failed}
    if args.json:
        print(json.dumps(summary, indent=2))
    print(f"{who}{len(res.done)} segmented, {len(res.skipped)} already complete, {len(res.failed)} failed "
          f"-> {out}", file=log)
    for case_id, why in res.failed.items():
        print(f"  FAILED {case_id}: {why}", file=sys.stderr)
    return 1 if res.failed else 0
