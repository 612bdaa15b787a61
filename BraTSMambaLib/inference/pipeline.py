"""Segment a case end to end: load, preprocess (nnU-Net), sliding-window predict, restore the input
geometry, assemble labels, write outputs; and batches of cases (resumable, split across torchrun ranks).
"""
from __future__ import annotations

import os
import platform
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.inference import outputs as O
from BraTSMambaLib.inference import postprocessing as P
from BraTSMambaLib.inference.package import ModelPackage
from BraTSMambaLib.inference.predictor import SlidingWindowPredictor, resolve_device, resolve_precision
from BraTSMambaLib.progress import ProgressCallback, stage_fraction, within

FAST_OVERLAP = 0.25


@dataclass
class SegmentOptions:
    """What the `segment` command's flags control.

    device, fast, overlap, tta, tiles_per_forward, precision, memory_format, compile and compile_scope
    take effect in `load_model` (they configure the predictor and prepare its networks); labels,
    outputs, evaluate and overwrite in each `segment_case` call.
    """

    device: str = "auto"
    fast: bool = False
    overlap: float | None = None
    tta: int | None = None
    labels: str = "2021"
    tiles_per_forward: int | None = None
    precision: str = "auto"
    memory_format: str = "auto"
    compile: str = "off"
    compile_scope: str = "whole"
    save_probabilities: bool = False
    overlay: bool = False
    evaluate: bool = False
    overwrite: bool = False

    @property
    def effective_overlap(self) -> float:
        return self.overlap if self.overlap is not None else (FAST_OVERLAP if self.fast else 0.5)

    @property
    def effective_tta(self) -> int:
        return self.tta if self.tta is not None else (1 if self.fast else 8)


@dataclass
class LoadedModel:
    """A verified package with its networks on a device, plans, and a sliding-window predictor."""

    package: ModelPackage
    predictor: SlidingWindowPredictor
    plans: tuple
    load_seconds: float

    @property
    def device(self):
        return self.predictor.device


def load_model(model: str | os.PathLike | ModelPackage | None, options: SegmentOptions) -> LoadedModel:
    """Resolve `model` (catalogue name, package, nnU-Net folder), verify it, build its networks."""
    from BraTSMambaLib.inference.catalogue import resolve_model
    from BraTSMambaLib.inference.preprocessing import plans_for

    t0 = time.perf_counter()
    pkg = model if isinstance(model, ModelPackage) else resolve_model(model)
    device = resolve_device(options.device)
    if device.type == "cpu":
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
    nets = pkg.build_networks(device)
    precision = resolve_precision(device, options.precision, fast=options.fast)
    predictor = SlidingWindowPredictor(
        nets, pkg.patch_size, device, overlap=options.effective_overlap, tta=options.effective_tta,
        mirror_axes=pkg.mirror_axes, tiles_per_forward=options.tiles_per_forward, precision=precision,
        memory_format=options.memory_format, compile=options.compile, compile_scope=options.compile_scope)
    return LoadedModel(pkg, predictor, plans_for(pkg), time.perf_counter() - t0)


class _Timer:
    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.times: dict[str, float] = {}
        self.sync = sync or (lambda: None)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.sync()
        self.times[stage] = round(self.times.get(stage, 0.0) + time.perf_counter() - t0, 4)


@dataclass
class CaseResult:
    """What segmenting one case produced (arrays kept for callers such as the Slicer module)."""

    case_id: str
    paths: dict[str, Path]
    report: dict[str, Any]
    labels: np.ndarray = field(repr=False, default=None)
    regions: np.ndarray = field(repr=False, default=None)
    probabilities: np.ndarray | None = field(repr=False, default=None)


def predict_case(case, model: LoadedModel, options: SegmentOptions, timer: _Timer | None = None,
                 on_progress: ProgressCallback | None = None) -> tuple:
    """(probabilities (3, z, y, x) on the input grid, timings) for a loaded BraTSCase, nothing written.

    `on_progress` hears the preprocess, inference (after every forward pass) and postprocess stages.
    """
    from BraTSMambaLib.inference.preprocessing import restore

    timer = timer or _Timer(_sync_for(model.device))
    prob, props = _predict(case, model, timer, on_progress)
    with timer("postprocess"):
        full = restore(prob, props, *model.plans)
    return full, timer.times


@dataclass
class LabelPrediction:
    """A case's label map and region masks on the input grid (and its probabilities when asked for)."""

    labels: np.ndarray  # (z, y, x) uint8 in the requested convention
    regions: np.ndarray  # (3, z, y, x) bool in REGIONS order, implied by `labels` (nested)
    probabilities: np.ndarray | None  # (3, z, y, x) float32, as `predict_case` returns them
    times: dict[str, float]


def predict_labels(case, model: LoadedModel, options: SegmentOptions, timer: _Timer | None = None,
                   on_progress: ProgressCallback | None = None, *, probabilities: bool = False) -> LabelPrediction:
    """Label map and regions of a loaded BraTSCase, nothing written: exactly what labelling
    `predict_case`'s probabilities gives (`postprocessing.label_map(region_masks(p))`, then
    `consistent_regions`), but thresholded and labelled on the cropped grid where the predictor
    left the probabilities (the GPU on CUDA), so only the uint8 label map comes to the host, where
    the regions follow from it and both are put back into the input grid. Full-size probabilities are built only if `probabilities`.
    """
    timer = timer or _Timer(_sync_for(model.device))
    prob, props = _predict(case, model, timer, on_progress)
    with timer("postprocess"):
        labels, regions, full = labels_on_input_grid(prob, props, model.plans, options.labels,
                                                     probabilities=probabilities)
    return LabelPrediction(labels, regions, full, timer.times)


def labels_on_input_grid(prob, props: dict, plans: tuple, convention: str = "2021", *,
                         probabilities: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(labels, regions, probabilities or None) on the input grid from region probabilities on the
    preprocessed grid (`predict_labels` without the network): resampled to the cropped input grid
    only when preprocessing resampled, thresholded and labelled there on the probabilities' device,
    then put into the full volume (zero outside the crop, where the full-size probabilities are 0)."""
    from BraTSMambaLib.inference.preprocessing import restore, to_cropped_input_grid, uncrop

    pm, cm, dj = plans
    cropped = to_cropped_input_grid(prob, props, pm, cm)
    crop_labels = _host(P.label_map(P.region_masks(cropped), convention))  # only uint8 labels leave the device
    labels = uncrop(crop_labels, props, pm)
    regions = uncrop(P.consistent_regions(crop_labels, convention), props, pm)
    full = restore(cropped, props, pm, cm, dj) if probabilities else None
    return labels, regions, full


def _predict(case, model: LoadedModel, timer: _Timer, on_progress: ProgressCallback | None) -> tuple:
    """(region probabilities on the preprocessed grid, on the predictor's device; nnU-Net properties)."""
    import SimpleITK as sitk

    from BraTSMambaLib.inference.device_preprocessing import preprocess_on_device
    from BraTSMambaLib.inference.preprocessing import preprocess

    tell = on_progress or (lambda stage, fraction, message="": None)
    pm, cm, dj = model.plans
    tell("preprocess", stage_fraction("preprocess"), f"{case.case_id}: resampling and normalising")
    with timer("preprocess"):
        spacing_zyx = tuple(reversed(case.reference.GetSpacing()))
        channels = [sitk.GetArrayViewFromImage(case.images[k]) for k in C.MODALITIES]  # case.array(), unstacked
        on_device = (preprocess_on_device(channels, spacing_zyx, pm, cm, model.device)
                     if model.device.type == "cuda" else None)
        data, props = on_device or preprocess(channels, spacing_zyx, pm, cm, dj)
    tell("inference", stage_fraction("inference"), f"{case.case_id}: sliding window")

    def on_tiles(done: int, total: int) -> None:
        tell("inference", stage_fraction("inference", done / total), f"tile {done}/{total}")

    with timer("inference"):
        prob = model.predictor.predict(data, on_tiles=on_tiles if on_progress is not None else None)
    tell("postprocess", stage_fraction("postprocess"), f"{case.case_id}: restoring the input geometry")
    return prob, props


def _host(x) -> np.ndarray:
    return x.cpu().numpy() if hasattr(x, "cpu") else np.asarray(x)


def segment_case(
    case: Any, model: LoadedModel, out_dir: str | os.PathLike, options: SegmentOptions,
    on_progress: ProgressCallback | None = None,
) -> CaseResult:
    """Segment one case (folder, {modality: path} or BraTSCase) and write its outputs into `out_dir`.

    Existing outputs are refused before any work unless `options.overwrite`; if writing fails half way
    the files written by this call are removed again. `on_progress` hears every stage from reading the
    images to writing the outputs; "done" is left to the caller, who knows when the whole job ends.
    """
    t_start = time.perf_counter()
    (on_progress or (lambda *a: None))("load", stage_fraction("load", 0.5), "reading the images")
    loaded, read_s = read_case(case)
    result, write = predict_case_outputs(loaded, model, out_dir, options, on_progress, read_s=read_s,
                                         t_start=t_start)
    write()
    return result


def read_case(case: Any) -> tuple[Any, float]:
    """(BraTSCase, seconds spent reading) for a folder, {modality: path} or an already loaded BraTSCase."""
    from BraTSMambaLib.data.case import BraTSCase, load_case

    t0 = time.perf_counter()
    if not isinstance(case, BraTSCase):
        case = load_case(case)
    return case, time.perf_counter() - t0


def predict_case_outputs(
    case: Any, model: LoadedModel, out_dir: str | os.PathLike, options: SegmentOptions,
    on_progress: ProgressCallback | None = None, *, read_s: float = 0.0, t_start: float | None = None,
) -> tuple[CaseResult, Callable[[], None]]:
    """Everything of `segment_case` for a loaded BraTSCase but the writing: (result, write), where
    write() writes the outputs atomically. The device's work for the case is complete when this returns,
    so a batch can write one case on a thread while the next is predicted."""
    tell = on_progress or (lambda stage, fraction, message="": None)
    timer = _Timer(_sync_for(model.device))
    timer.times["read"] = round(read_s, 4)
    t_start = time.perf_counter() - read_s if t_start is None else t_start
    paths = O.output_paths(out_dir, case.case_id, probabilities=options.save_probabilities, overlay=options.overlay)
    O.check_targets(paths, options.overwrite)
    pred = predict_labels(case, model, options, timer, on_progress, probabilities=options.save_probabilities)
    labels, regions, prob = pred.labels, pred.regions, pred.probabilities
    with timer("postprocess"):
        spacing = tuple(case.reference.GetSpacing())
        report: dict[str, Any] = {
            "case": case.case_id,
            "label_convention": C.label_convention(options.labels).name,
            **P.volumes_ml(regions, labels, spacing, options.labels),
        }
    if options.evaluate:  # against the case's own label map when it has one
        with timer("evaluate"):
            report["evaluation"] = evaluate(labels, case, options.labels) if case.seg is not None else None
    report.update(
        model={"name": model.package.name, "network": model.package.network_name,
               "folds": len(model.package.weight_files), "source": str(model.package.source)},
        settings={"overlap": model.predictor.overlap, "tta": len(model.predictor.flips),
                  **model.predictor.settings},
        device=_device_name(model.device),
        inputs={k: str(p) for k, p in case.paths.items()},
    )
    tell("write", stage_fraction("write"), f"{case.case_id}: writing {len(paths)} files")
    timer.sync = lambda: None   # the labels are on the host: writing waits for no device work

    def write() -> None:
        _write_outputs(paths, case, model, labels, regions, prob, report, timer, t_start, options)

    return CaseResult(case.case_id, paths, report, labels, regions, prob), write


def _write_outputs(paths: Mapping[str, Path], case, model: LoadedModel, labels: np.ndarray, regions: np.ndarray,
                   prob: np.ndarray | None, report: dict[str, Any], timer: "_Timer", t_start: float,
                   options: SegmentOptions) -> None:
    """Write a case's outputs as one unit: every file goes to a hidden temporary name first, and only
    when all are written are they renamed into place, `_volumes.json` last (it marks a complete case).

    A failure removes the temporaries; a process killed while writing leaves only hidden `.tmp` files,
    never a set of outputs that looks whole (without `_volumes.json` a case counts as unfinished).
    """
    import contextlib

    from BraTSMambaLib.data.io import atomic_path, write_label_map

    order = ["volumes", "seg", "nrrd", "probabilities", "overlay"]  # renamed in reverse: volumes.json last
    with contextlib.ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_path(paths[k], overwrite=options.overwrite))
               for k in order if k in paths}
        with timer("write"):
            ref = case.reference
            write_label_map(labels, ref, tmp["seg"], overwrite=True)
            O.write_seg_nrrd(regions, ref, tmp["nrrd"], overwrite=True)
            if "probabilities" in tmp:
                O.write_probabilities(prob, ref, tmp["probabilities"], overwrite=True)
            if "overlay" in tmp:
                import SimpleITK as sitk

                flair = sitk.GetArrayViewFromImage(case.images["flair"])
                O.write_overlay(flair, regions, tuple(ref.GetSpacing()), tmp["overlay"],
                                title=f"{case.case_id} - {model.package.name}", overwrite=True)
        times = dict(timer.times)
        times["total_excluding_io"] = round(sum(v for k, v in times.items() if k not in ("read", "write")), 4)
        times["total"] = round(time.perf_counter() - t_start, 4)
        report["timings_s"] = times
        O.write_json(report, tmp["volumes"], overwrite=True)


def evaluate(labels: np.ndarray, case, convention: str) -> dict[str, Any]:
    """Dice/HD95 per region of `labels` against the case's own label map (BraTSMambaLib.metrics)."""
    from BraTSMambaLib.metrics import evaluate_labels

    ref = case.seg_array(convention)
    spacing_zyx = tuple(reversed(case.reference.GetSpacing()))
    result = evaluate_labels(labels, ref, spacing_zyx, convention)
    return _jsonable(result)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return _jsonable(vars(obj))
    return obj


def is_complete(out_dir: str | os.PathLike, case_id: str, options: SegmentOptions) -> bool:
    """True when every output the options ask for exists (volumes.json is written last)."""
    paths = O.output_paths(out_dir, case_id, probabilities=options.save_probabilities, overlay=options.overlay)
    return all(p.is_file() for p in paths.values())


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not launched by torchrun."""
    return int(os.environ.get("RANK", "0")), max(1, int(os.environ.get("WORLD_SIZE", "1")))


@dataclass
class BatchResult:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def segment_batch(
    root: str | os.PathLike, model: LoadedModel, out_dir: str | os.PathLike, options: SegmentOptions,
    *, progress: bool = True, log: Callable[[str], None] = print, on_progress: ProgressCallback | None = None,
    pipeline: bool = True,
) -> BatchResult:
    """Segment every case folder below `root`; skip complete ones, continue past failures.

    With `pipeline` (the default) the next case is read on one thread and the previous case's outputs are
    written on another while the current case is predicted, so the device does not wait for the disk; at
    most one write is in flight, and an interrupted batch still finishes (or cleanly fails) that write.
    Under torchrun (RANK/WORLD_SIZE) each rank takes every WORLD_SIZE-th case of the sorted list.
    `on_progress` hears each case's stages inside its share of the bar after the model load (messages
    start with "case i/n <id>:"), a "write" line with each case's outcome, in case order, and "done" at
    the end; its fractions never go back.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from BraTSMambaLib.data.case import find_cases, scan_folder

    folders = find_cases(root)
    if not folders:
        raise BraTSInputError(f"{root}: no BraTS case folders found below it")
    rank, world = rank_and_world()
    mine = folders[rank::world]
    plan = []
    for folder in mine:
        case_id = scan_folder(folder).case_id
        plan.append((folder, case_id or folder.name,
                     not options.overwrite and bool(case_id) and is_complete(out_dir, case_id, options)))
    result = BatchResult()
    report = _monotonic(on_progress)
    start = stage_fraction("load")
    share = (1.0 - start) / max(1, len(plan))
    bar = tqdm(total=len(plan), desc=f"segment{f' [rank {rank}/{world}]' if world > 1 else ''}", unit="case",
               disable=not progress)

    def case_progress(i: int) -> ProgressCallback | None:
        return within(report, start + i * share, start + (i + 1) * share, f"case {i + 1}/{len(plan)} {plan[i][1]}: ")

    def finish(i: int, outcome: str, error: str | None = None) -> None:
        case_id = plan[i][1]
        if error is not None:
            result.failed[case_id] = error
        elif outcome == "segmented":
            result.done.append(case_id)
        else:
            result.skipped.append(case_id)
        bar.set_postfix_str(case_id)
        bar.update(1)
        if report is not None:
            case_progress(i)("write", 1.0, outcome)

    def settle(pending: tuple[int, Any] | None) -> None:
        if pending is None:
            return
        i, fut = pending
        try:
            fut.result()
            finish(i, "segmented")
        except Exception as e:  # noqa: BLE001 - a failed write fails its case, not the batch
            finish(i, "failed", _why(e))

    todo = [i for i, item in enumerate(plan) if not item[2]]
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        reads: dict[int, Any] = {}

        def prefetch(k: int) -> None:
            if pipeline and k < len(todo) and todo[k] not in reads:
                reads[todo[k]] = reader.submit(read_case, plan[todo[k]][0])

        order = {i: k for k, i in enumerate(todo)}
        pending = None
        for i, (folder, case_id, skip) in enumerate(plan):
            if skip:
                settle(pending)
                pending = None
                finish(i, "skipped, outputs complete")
                continue
            prefetch(order[i])
            prefetch(order[i] + 1)
            tell = case_progress(i)
            t_start = time.perf_counter()
            try:
                if tell is not None:
                    tell("load", stage_fraction("load", 0.5), "reading the images")
                fut = reads.pop(i, None)
                loaded, read_s = fut.result() if fut is not None else read_case(folder)
                _, write = predict_case_outputs(loaded, model, out_dir, options, tell, read_s=read_s,
                                                t_start=t_start)
            except Exception as e:  # noqa: BLE001 - a broken case must not stop the batch
                if os.environ.get("BRATSMAMBA_DEBUG"):
                    traceback.print_exc()
                settle(pending)
                pending = None
                finish(i, "failed", _why(e))
                continue
            settle(pending)
            pending = (i, writer.submit(write))
            if not pipeline:
                settle(pending)
                pending = None
        settle(pending)
    bar.close()
    if on_progress is not None:
        on_progress("done", 1.0, f"{len(result.done)} segmented, {len(result.skipped)} already complete, "
                                 f"{len(result.failed)} failed")
    return result


def _why(e: BaseException) -> str:
    """A failed case's reason: the message of our input errors, type and message of anything else."""
    return str(e) if isinstance(e, BraTSInputError) else f"{type(e).__name__}: {e}"


def _monotonic(callback: ProgressCallback | None) -> ProgressCallback | None:
    """`callback` with fractions that never go back (a batch reports a case's outcome after the next
    case's first stages)."""
    if callback is None:
        return None
    last = [0.0]

    def report(stage: str, fraction: float, message: str = "") -> None:
        last[0] = max(last[0], fraction)
        callback(stage, last[0], message)

    return report


def _sync_for(device) -> Callable[[], None] | None:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return lambda: torch.cuda.synchronize(device)
    return None


def _device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return str(device)
