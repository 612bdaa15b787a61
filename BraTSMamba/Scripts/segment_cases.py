"""Segment one BraTS case folder, or every case below a folder, through MRML nodes; write <case>.seg.nrrd.

Inside Slicer, without a window (Slicer hands the arguments after the script to it in sys.argv, as
SlicerRT's BatchProcessing scripts rely on; a leading "--" is accepted too):

    Slicer --no-main-window --python-script BraTSMamba/Scripts/segment_cases.py --input DIR --output DIR

or in plain Python with PyPI slicer-core (same code path, no Slicer application):

    python BraTSMamba/Scripts/segment_cases.py --input DIR --output DIR [--model M] [--device D] [--fast]

Each case's four volumes are read into volume nodes by Slicer's storage nodes, segmented in this
process (BraTSMambaLib.mrml.segment_volume_nodes: three overlapping segments WT, TC, ET) and saved by
the segmentation storage node, with `<case>_volumes.json` (mL per segment) beside it. Finished cases
are skipped unless --overwrite; a broken case is reported and the others go on. Exit status: 0 all
done, 1 a case failed, 2 bad arguments or input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _ensure_library_importable() -> None:
    """Source checkout: the library is two folders up; installed extension: beside the Scripts folder."""
    import importlib.util

    if importlib.util.find_spec("BraTSMambaLib") is not None:
        return
    here = Path(__file__).resolve()
    for root in (here.parents[2], here.parents[1]):
        if (root / "BraTSMambaLib").is_dir():
            sys.path.insert(0, str(root))
            return


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="segment_cases.py",
        description="Segment BraTS cases (T1, T1ce, T2, FLAIR) into WT/TC/ET segmentations (.seg.nrrd) through "
                    "Slicer's MRML scene; runs in Slicer (--python-script) or in plain Python with slicer-core.",
        epilog="Exit status: 0 all cases done, 1 a case failed, 2 bad arguments or input.")
    p.add_argument("--input", required=True, type=Path,
                   help="a case folder (<case>_t1.nii.gz ... or <case>-t1n.nii.gz ...) or a folder of case folders")
    p.add_argument("--output", required=True, type=Path, help="folder for <case>.seg.nrrd and <case>_volumes.json")
    p.add_argument("--model", default=None,
                   help="catalogue name, model package (folder/.zip) or nnU-Net results folder; default: bundled demo")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu", "mps"), help="where the network runs")
    p.add_argument("--fast", action="store_true", help="no test-time augmentation, less tile overlap")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs instead of skipping the case")
    return p


def segment_cases(args: argparse.Namespace, scene=None) -> int:
    """Segment every case under args.input; returns the exit status."""
    from BraTSMambaLib.data import conventions as cv
    from BraTSMambaLib.data.case import find_case_files, find_cases
    from BraTSMambaLib.data.io import atomic_write_text
    from BraTSMambaLib.errors import BraTSInputError
    from BraTSMambaLib.inference.pipeline import SegmentOptions, load_model
    from BraTSMambaLib import mrml

    try:
        folders = find_cases(args.input)
        if not folders:
            raise BraTSInputError(f"{args.input}: no BraTS case files found at or below it")
        t0 = time.perf_counter()
        model = load_model(args.model, SegmentOptions(device=args.device, fast=args.fast))
        print(f"model {model.package.name} on {model.device} loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    except BraTSInputError as e:
        print(f"segment_cases: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # in Slicer: the packages the module installs on first use are missing
        print(f"segment_cases: error: {e}. Install the dependencies first: open the BraTS Mamba module and "
              "press Segment once (it offers to install them), or run PythonSlicer -m pip install the "
              "packages listed in pyproject.toml.", file=sys.stderr)
        return 2
    scene = scene if scene is not None else mrml.new_scene()
    failed = []
    for i, folder in enumerate(folders, 1):
        added = []
        try:
            case_id, _naming, files = find_case_files(folder)
            seg_path = args.output / f"{case_id}.seg.nrrd"
            json_path = args.output / f"{case_id}_volumes.json"
            if seg_path.exists() and json_path.exists() and not args.overwrite:
                print(f"[{i}/{len(folders)}] {case_id}: done already, skipped", flush=True)
                continue
            t0 = time.perf_counter()
            nodes = {m: mrml.load_volume(scene, files[m]) for m in cv.MODALITIES}
            added += [n for n in nodes.values()] + [n.GetStorageNode() for n in nodes.values()]
            segmentation = mrml.segment_volume_nodes(scene, nodes, model=model, device=args.device, fast=args.fast,
                                                     name=f"{case_id} tumour", show3d=False)
            added.append(segmentation)
            volumes = mrml.segment_volumes_ml(segmentation)
            mrml.save_node(segmentation, seg_path, overwrite=args.overwrite)
            atomic_write_text(json_path, json.dumps({"case": case_id, "volumes_ml": volumes,
                                                     "model": model.package.name}, indent=2) + "\n",
                              overwrite=args.overwrite)
            text = ", ".join(f"{r} {volumes[r]:.2f} mL" for r in cv.REGIONS)
            print(f"[{i}/{len(folders)}] {case_id}: {text} ({time.perf_counter() - t0:.1f} s) -> {seg_path}", flush=True)
        except BraTSInputError as e:
            failed.append(folder)
            print(f"[{i}/{len(folders)}] {folder}: error: {e}", file=sys.stderr, flush=True)
        finally:
            for node in added:
                if node is not None and node.GetScene() is scene:
                    scene.RemoveNode(node)
    if failed:
        print(f"segment_cases: {len(failed)} of {len(folders)} cases failed: {', '.join(map(str, failed))}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    _ensure_library_importable()
    import slicer

    return segment_cases(args, getattr(slicer, "mrmlScene", None))


if __name__ == "__main__":
    try:
        status = main()
    except SystemExit as e:  # argparse errors and --help
        status = e.code if isinstance(e.code, int) else 2
    except Exception:
        import traceback

        traceback.print_exc()
        status = 1
    import slicer

    if hasattr(slicer, "app"):
        slicer.util.exit(status)
    else:
        sys.exit(status)
