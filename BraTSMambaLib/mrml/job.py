"""A segmentation job run by the `brats-mamba segment` CLI in a separate process, files exchanged in a
temporary folder, results loaded into the scene in one step only after the process succeeded.

Used by the Slicer module (polled from a qt.QTimer) and by tests (polled in a loop) alike:

    job = SegmentJob(scene, nodes, model=None, device="auto", fast=True)
    job.start()                       # validates the nodes and writes the inputs first
    while not job.poll(): ...         # True once the process ended and the results are loaded (or failed)
    job.segmentation, job.table, job.error
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import BraTSMambaLib
from BraTSMambaLib.data import conventions as cv
from BraTSMambaLib.data.io import write_image
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.mrml.case import case_from_volume_nodes
from BraTSMambaLib.mrml.pipeline import read_seg_nrrd_masks
from BraTSMambaLib.mrml.process import STAGES, BackgroundProcess, JobControl, Progress
from BraTSMambaLib.mrml.segmentation import labelmap_from_prediction, segmentation_from_prediction, volumes_table
from BraTSMambaLib.progress import PROGRESS_ENV

#: Lines `brats-mamba segment` prints anyway, used as stage marks when it prints no JSON progress.
CLI_STAGE_LINES: tuple[tuple[str, str], ...] = (
    (r"^model .* loaded in", "inference"),
    (r"^wrote ", "done"),
)


def default_python() -> str:
    """Slicer's own Python launcher (PythonSlicer) inside Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def library_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment in which a child Python imports this very BraTSMambaLib and reports progress as JSON."""
    env = dict(os.environ if base is None else base)
    lib_parent = str(Path(BraTSMambaLib.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([lib_parent, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env[PROGRESS_ENV] = "json"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


@dataclass
class SegmentJob(JobControl):
    """Segment four volume nodes with the CLI in a child process; load WT/TC/ET when it succeeds."""

    scene: object
    nodes: Mapping[str, object]
    model: str | None = None
    device: str = "auto"
    fast: bool = False
    name: str = "BraTS tumour"
    target: object | None = None       # segmentation node to replace; None makes a new one
    labelmap: bool = False             # also create the BraTS label-map volume
    labels: str = "2021"
    python: str = field(default_factory=default_python)
    extra_args: Sequence[str] = ()
    keep_files: bool = False
    env_base: Mapping[str, str] | None = None  # inside Slicer: slicer.util.startupEnvironment()

    process: BackgroundProcess | None = None
    segmentation: object | None = None
    table: object | None = None
    labelmap_node: object | None = None
    error: str | None = None
    workdir: Path | None = None
    case_id: str = "case"
    done: bool = False
    cancelled: bool = False            # cancel() was called (by the user, or on a timeout)

    def command(self, inputs: Mapping[str, Path], out_dir: Path) -> list[str]:
        """The CLI call: `python -m BraTSMambaLib.cli segment --t1 F ... -o OUT [--model M] --device D [--fast]`."""
        argv = [self.python, "-m", "BraTSMambaLib.cli", "segment"]
        for m in cv.MODALITIES:
            argv += [f"--{m}", str(inputs[m])]
        argv += ["-o", str(out_dir), "--device", self.device, "--labels", self.labels]
        if self.model:
            argv += ["--model", str(self.model)]
        if self.fast:
            argv.append("--fast")
        return argv + list(self.extra_args)

    def start(self) -> None:
        """Validate the inputs, write them to a temporary folder and launch the CLI.

        BraTSInputError (missing modality, grid mismatch...) is raised here, before any process starts.
        """
        case = case_from_volume_nodes(self.nodes)
        self.case_id = _safe_id(case.case_id)
        self.workdir = Path(tempfile.mkdtemp(prefix="brats-mamba-"))
        try:
            naming = cv.NAMINGS["brats2021"]
            inputs = {m: write_image(case.images[m], self.workdir / "input" / naming.filename(self.case_id, m, ".nii"),
                                     compress=False) for m in cv.MODALITIES}
            out_dir = self.workdir / "output"
            self.process = BackgroundProcess(self.command(inputs, out_dir), env=library_env(self.env_base),
                                             log_path=self.workdir / "process.log", stage_patterns=CLI_STAGE_LINES,
                                             progress=Progress("load", STAGES["load"][0]))
            self.process.start()
        except BaseException:
            self._cleanup()
            raise

    @property
    def progress(self) -> Progress:
        return self.process.progress if self.process else Progress()

    def _failure(self, returncode: int) -> str:
        return f"Segmentation failed (exit status {returncode})."

    @property
    def output_dir(self) -> Path | None:
        return self.workdir / "output" if self.workdir else None

    def _load_results(self) -> None:
        seg_nrrd = self.output_dir / f"{self.case_id}.seg.nrrd"
        if not seg_nrrd.is_file():
            found = sorted(self.output_dir.glob("*.seg.nrrd")) if self.output_dir.is_dir() else []
            if len(found) != 1:
                raise BraTSInputError(f"the CLI finished but wrote no {seg_nrrd.name}")
            seg_nrrd = found[0]
        reference = self.nodes[cv.REFERENCE_MODALITY]
        masks = read_seg_nrrd_masks(seg_nrrd, reference)
        created = []
        try:
            segmentation = segmentation_from_prediction(self.scene, masks, reference, self.name, target=self.target)
            if self.target is None:
                created.append(segmentation)
            table_name = f"{segmentation.GetName()} volumes"
            old_table = self._reusable(table_name, "vtkMRMLTableNode")
            table = volumes_table(self.scene, segmentation, table_name, target=old_table)
            if old_table is None:
                created.append(table)
            labelmap = None
            if self.labelmap:
                labelmap_name = f"{segmentation.GetName()} labels"
                old_labelmap = self._reusable(labelmap_name, "vtkMRMLLabelMapVolumeNode")
                labelmap = labelmap_from_prediction(self.scene, masks, reference, labelmap_name,
                                                    convention=self.labels, target=old_labelmap)
                if old_labelmap is None:
                    created.append(labelmap)
        except BaseException:
            for node in created:
                self.scene.RemoveNode(node)
            raise
        self.segmentation, self.table, self.labelmap_node = segmentation, table, labelmap

    def _reusable(self, name: str, cls: str):
        """When replacing a segmentation, its table / label map of an earlier run are replaced too."""
        if self.target is None:
            return None
        node = self.scene.GetFirstNodeByName(name)
        return node if node is not None and node.IsA(cls) else None

    def _cleanup(self) -> None:
        if self.workdir and not self.keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)
