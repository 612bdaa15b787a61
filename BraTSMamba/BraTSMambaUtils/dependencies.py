"""Install what the BraTSMamba CLI needs into Slicer's Python, on first use and only after asking.

torch goes through the PyTorch extension (it picks the CUDA build that fits the GPU driver); the
rest are the library's own `[project.dependencies]` from pyproject.toml (shipped beside BraTSMambaLib,
the one list of what the library needs), installed through pip with the installed torch pinned by a
constraints file so that no dependency swaps it for a CPU-only wheel. numpy and SimpleITK ship with
Slicer and are left alone.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import tempfile
from pathlib import Path

#: Installed otherwise: torch by the PyTorch extension; numpy and SimpleITK come with Slicer.
NOT_FROM_PIP = frozenset({"torch", "numpy", "simpleitk"})

HINT = ("Check the network connection (and proxy settings), then try again. To install by hand, run "
        "in a terminal: PythonSlicer -m pip install {specs} (torch through the PyTorch Utils module).")


class DependencyError(RuntimeError):
    """A dependency could not be installed; the message says what and how to fix it."""


def pyproject_path() -> Path:
    """pyproject.toml beside the BraTSMambaLib package (source checkout, or installed with the extension)."""
    import BraTSMambaLib

    return Path(BraTSMambaLib.__file__).resolve().parents[1] / "pyproject.toml"


def project_dependencies(path: Path | None = None) -> list[str]:
    """`[project.dependencies]` of pyproject.toml."""
    return parse_dependencies((path or pyproject_path()).read_text(encoding="utf-8"))


def parse_dependencies(text: str, *, use_tomllib: bool = True) -> list[str]:
    """The dependency strings of a pyproject.toml text: tomllib where Python has it (3.11+), else the
    quoted strings of the `dependencies = [...]` array (Slicer builds with older Pythons)."""
    if use_tomllib:
        try:
            import tomllib
        except ImportError:
            pass
        else:
            return list(tomllib.loads(text)["project"]["dependencies"])
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M)
    return re.findall(r'^\s*"([^"]+)"', block.group(1), re.M) if block else []


def requirements(path: Path | None = None) -> list[str]:
    """What pip installs into Slicer: the library's dependencies minus those installed otherwise."""
    from packaging.requirements import Requirement

    return [spec for spec in project_dependencies(path) if Requirement(spec).name.lower() not in NOT_FROM_PIP]


def missing_requirements(path: Path | None = None) -> list[str]:
    """Specifiers whose distribution is absent or at a version that does not satisfy them."""
    from packaging.requirements import Requirement

    missing = []
    for spec in requirements(path):
        req = Requirement(spec)
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(spec)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(spec)
    return missing


def torch_ready() -> bool:
    try:
        importlib.metadata.version("torch")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def ensure_dependencies(ask: bool = True) -> bool:
    """Make sure torch and the requirements are installed; False when the user declined.

    Raises DependencyError with a plain message and a hint when an installation fails.
    """
    import slicer

    if not torch_ready():
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise DependencyError("BraTSMamba needs the PyTorch extension: install 'PyTorch' from the Extensions "
                                  "Manager, restart Slicer and press Segment again.") from None
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
        if not torch_logic.torchInstalled():
            torch = torch_logic.installTorch(askConfirmation=ask, torchVersionRequirement=_torch_requirement())
            if torch is None:
                return False
    missing = missing_requirements()
    if not missing:
        return True
    if ask and not slicer.util.confirmOkCancelDisplay(
            "BraTSMamba needs these Python packages, which will now be downloaded and installed into Slicer "
            "(this may take several minutes):\n\n" + "\n".join(missing), "BraTSMamba: install packages"):
        return False
    constraints = _torch_constraints()
    try:
        _pip_install(missing, constraints)
    except Exception as e:
        raise DependencyError(f"Installing {', '.join(missing)} failed: {e}\n" + HINT.format(specs=" ".join(f'"{m}"' for m in missing))) from e
    finally:
        if constraints:
            os.unlink(constraints)
    still = missing_requirements()
    if still:
        raise DependencyError(f"After installing, still missing: {', '.join(still)}.\n"
                              + HINT.format(specs=" ".join(f'"{m}"' for m in still)))
    return True


def _torch_requirement() -> str:
    """The torch version range pyproject.toml asks for (e.g. ">=2.3")."""
    from packaging.requirements import Requirement

    for spec in project_dependencies():
        req = Requirement(spec)
        if req.name.lower() == "torch":
            return str(req.specifier)
    return ""


def _pip_install(specs: list[str], constraints: str | None) -> None:
    """pip install through Slicer: `slicer.packaging` (newer Slicer, takes `constraints=`) or `slicer.util`."""
    import inspect

    import slicer

    packaging = getattr(slicer, "packaging", None)
    install = getattr(packaging, "pip_install", None)
    if install is not None and "constraints" in inspect.signature(install).parameters:
        install(specs, constraints=constraints) if constraints else install(specs)
    else:
        slicer.util.pip_install((["-c", constraints] if constraints else []) + specs)


def _torch_constraints() -> str | None:
    """A constraints file pinning the installed torch (and its CUDA build tag), or None without torch."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    fd, path = tempfile.mkstemp(prefix="brats-mamba-constraints-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(f"torch=={version}\n")
    return path
