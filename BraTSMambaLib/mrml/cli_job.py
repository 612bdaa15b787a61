"""`brats-mamba train` and `brats-mamba compare` as background jobs for the Slicer training module.

The same process machinery as the segmentation job (`mrml.process.BackgroundProcess`: own process
group, output read by a thread, cancel kills the whole tree; `mrml.job.default_python` /
`library_env`: Slicer's own Python importing this very BraTSMambaLib), polled from a qt.QTimer in
Slicer and in a loop by scripts and tests:

    job = CliJob(train_arguments(500, "umambabot", 0, epochs=400, results=R, preprocessed=P))
    job.start()
    while not job.poll(): ...        # True once the process ended; job.error holds the log tail on failure
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.mrml.job import default_python, library_env
from BraTSMambaLib.mrml.process import BackgroundProcess, JobControl
from BraTSMambaLib.training.planning import CONFIGURATION, DEFAULT_PLANS


def train_arguments(dataset: int | str, model: str, fold: int | str = 0, *, epochs: int | None = None,
                    device: str = "auto", plans: str = DEFAULT_PLANS, results: str | Path | None = None,
                    preprocessed: str | Path | None = None, resume: bool = False,
                    extra: Sequence[str] = ()) -> list[str]:
    """`brats-mamba train` arguments (after the program name) for one fold."""
    if not str(dataset).strip():
        raise BraTSInputError("dataset: give the nnU-Net dataset id (e.g. 500) or name")
    if not model.strip():
        raise BraTSInputError("model: choose a registry model (see `brats-mamba models`)")
    args = ["train", str(dataset).strip(), "--model", model.strip(), "--fold", str(fold), "--device", device,
            "--plans", plans]
    if epochs:
        args += ["--epochs", str(int(epochs))]
    if results:
        args += ["--results", str(results)]
    if preprocessed:
        args += ["--preprocessed", str(preprocessed)]
    if resume:
        args.append("--continue")
    return args + list(extra)


def compare_arguments(runs: Sequence[str | Path], out_stem: str | Path, *, test_cases: str | Path | None = None,
                      device: str = "auto") -> list[str]:
    """`brats-mamba compare` arguments writing OUT_STEM.md / .csv / .json."""
    if not runs:
        raise BraTSInputError("compare: choose at least one run folder")
    missing = [str(r) for r in runs if not Path(r).is_dir()]
    if missing:
        raise BraTSInputError(f"{missing[0]}: run folder not found")
    args = ["compare", *map(str, runs), "-o", str(out_stem), "--device", device]
    if test_cases:
        args += ["--test-cases", str(test_cases), "--fast"]
    return args


def find_run_folder(results: str | Path, dataset: int | str, model: str, fold: int | str = 0,
                    plans: str = DEFAULT_PLANS) -> Path | None:
    """The fold folder `brats-mamba train` writes to under an nnU-Net results folder, once it exists.

    `<results>/Dataset<NNN>_<name>/nnUNetTrainer<Network>__<plans>__3d_fullres/fold_<F>`; the
    trainer folder is matched to `model` through the registry (`registry_name_for_trainer`).
    """
    from BraTSMambaLib.errors import ModelPackageError
    from BraTSMambaLib.inference.nnunet_import import registry_name_for_trainer

    root = Path(results)
    key = str(dataset).strip()
    pattern = f"Dataset{int(key):03d}_*" if key.isdigit() else key
    for ds in sorted(root.glob(pattern)):
        for trainer_dir in sorted(ds.glob(f"*__{plans}__{CONFIGURATION}")):
            trainer = trainer_dir.name.split("__")[0]
            try:
                name = registry_name_for_trainer(trainer)
            except ModelPackageError:
                continue
            if name == model.lower() and (trainer_dir / f"fold_{fold}").is_dir():
                return trainer_dir / f"fold_{fold}"
    return None


@dataclass
class CliJob(JobControl):
    """One `brats-mamba` sub-command in a child process under Slicer's Python."""

    arguments: Sequence[str]
    python: str = field(default_factory=default_python)
    env_base: Mapping[str, str] | None = None   # inside Slicer: slicer.util.startupEnvironment()
    log_path: str | Path | None = None
    process: BackgroundProcess | None = None
    error: str | None = None
    done: bool = False
    cancelled: bool = False

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "BraTSMambaLib.cli", *map(str, self.arguments)]

    def start(self) -> None:
        self.process = BackgroundProcess(self.command, env=library_env(self.env_base), log_path=self.log_path)
        self.process.start()

    def _failure(self, returncode: int) -> str:
        return f"brats-mamba {self.arguments[0]} failed (exit status {returncode})."


@dataclass
class CompareJob(CliJob):
    """`brats-mamba compare` into a temporary folder; `table_csv` / `table_md` once it succeeded."""

    workdir: Path | None = None

    @classmethod
    def for_runs(cls, runs: Sequence[str | Path], *, test_cases: str | Path | None = None, device: str = "auto",
                 **kwargs) -> "CompareJob":
        workdir = Path(tempfile.mkdtemp(prefix="brats-mamba-compare-"))
        return cls(compare_arguments(runs, workdir / "table1", test_cases=test_cases, device=device),
                   workdir=workdir, **kwargs)

    @property
    def table_csv(self) -> Path | None:
        p = self.workdir / "table1.csv" if self.workdir else None
        return p if p is not None and p.is_file() and self.done and self.error is None else None

    @property
    def table_md(self) -> Path | None:
        p = self.workdir / "table1.md" if self.workdir else None
        return p if p is not None and p.is_file() and self.done and self.error is None else None

    def cleanup(self) -> None:
        """Remove the temporary folder (load the table first)."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
