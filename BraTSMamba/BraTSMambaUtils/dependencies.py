"""Install what the BraTSMamba CLI needs into Slicer's Python, on first use and only after asking.

torch goes through the PyTorch extension (it picks the CUDA build that fits the GPU driver); the
rest comes from Resources/requirements.txt through pip, with the installed torch pinned by a
constraints file so that no dependency swaps it for a CPU-only wheel.
"""
from __future__ import annotations

import importlib.metadata
import os
import tempfile
from pathlib import Path

MINIMUM_TORCH = ">=2.3"
REQUIREMENTS = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"

HINT = ("Check the network connection (and proxy settings), then try again. To install by hand, run "
        "in a terminal: PythonSlicer -m pip install -r \"{req}\" (torch through the PyTorch Utils module).")


class DependencyError(RuntimeError):
    """A dependency could not be installed; the message says what and how to fix it."""


def requirements(path: Path = REQUIREMENTS) -> list[str]:
    """Requirement specifiers in `path` (comments and blank lines dropped)."""
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines())
    return [ln for ln in lines if ln]


def missing_requirements(path: Path = REQUIREMENTS) -> list[str]:
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
            torch = torch_logic.installTorch(askConfirmation=ask, torchVersionRequirement=MINIMUM_TORCH)
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
        args = ["-c", constraints, *missing] if constraints else missing
        slicer.util.pip_install(args)
    except Exception as e:
        raise DependencyError(f"Installing {', '.join(missing)} failed: {e}\n" + HINT.format(req=REQUIREMENTS)) from e
    finally:
        if constraints:
            os.unlink(constraints)
    still = missing_requirements()
    if still:
        raise DependencyError(f"After installing, still missing: {', '.join(still)}.\n" + HINT.format(req=REQUIREMENTS))
    return True


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
