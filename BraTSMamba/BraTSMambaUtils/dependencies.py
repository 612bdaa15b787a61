"""Install what the BraTSMamba CLI needs into Slicer's Python, on first use and only after asking.

torch goes through the PyTorch extension (PyTorchUtils picks the CUDA build that fits the GPU
driver); the rest are the library's own `[project.dependencies]` from pyproject.toml (shipped beside
BraTSMambaLib, the one list of what the library needs), installed through `slicer.util.pip_install`
with a constraints file that pins the installed torch, numpy and SimpleITK, so that no dependency
swaps Slicer's own builds (or the CUDA torch) for other wheels. `requires-python` of the same file
decides whether this Slicer's Python can run the library at all.
"""
from __future__ import annotations

import importlib
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


def unsupported_python(path: Path | None = None, version: str | None = None) -> str | None:
    """A one-line reason when this Python (or `version`) is outside pyproject's `requires-python`, else None.

    Slicer 5.8 and older ship Python 3.9; the library needs what pyproject.toml says.
    """
    import platform

    from packaging.specifiers import SpecifierSet

    text = (path or pyproject_path()).read_text(encoding="utf-8")
    m = re.search(r'^requires-python\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        return None
    version = version or platform.python_version()
    if SpecifierSet(m.group(1)).contains(version, prereleases=True):
        return None
    return (f"BraTSMamba needs Python {m.group(1)}, and this Slicer runs Python {version}: "
            "use Slicer 5.10 or later (Python 3.12).")


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
                                  "Manager, restart Slicer and try again.") from None
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
    constraints = _write_constraints()
    try:
        _pip_install(missing, constraints)
    except Exception as e:
        raise DependencyError(f"Installing {', '.join(missing)} failed: {e}\n" + HINT.format(specs=" ".join(f'"{m}"' for m in missing))) from e
    finally:
        if constraints:
            os.unlink(constraints)
    importlib.invalidate_caches()  # pip ran in another process: let this one see the new distributions
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


def pip_call(specs: list[str], constraints: str | None):
    """(function, args, kwargs) that install `specs` under `constraints` with this Slicer's installer.

    Three generations exist: `slicer.packaging.pip_install(args, interactive=...)` (uv-based, asks
    again unless interactive=False; Base/Python/slicer/packaging/installer.py),
    `slicer.util.pip_install(requirements, constraints=..., requester=...)` (slicer.pydeps, 5.11+), and
    `slicer.util.pip_install(requirements)` taking a string or a list (older). The user has already
    been asked, so no second confirmation is requested.
    """
    import inspect

    import slicer

    cflags = ["-c", constraints] if constraints else []
    packaging = getattr(slicer, "packaging", None)
    install = getattr(packaging, "pip_install", None)
    if install is not None and "interactive" in inspect.signature(install).parameters:
        return install, (cflags + list(specs),), {"interactive": False}
    install = slicer.util.pip_install
    params = inspect.signature(install).parameters
    if constraints and "constraints" in params:
        extra = {"requester": "BraTSMamba"} if "requester" in params else {}
        return install, (list(specs),), {"constraints": constraints, **extra}
    return install, (cflags + list(specs),), {}


def _pip_install(specs: list[str], constraints: str | None) -> None:
    function, args, kwargs = pip_call(specs, constraints)
    function(*args, **kwargs)


def pinned_constraints() -> str:
    """Constraints-file text pinning the installed torch, numpy and SimpleITK (those not found are left out)."""
    lines = []
    for dist in ("torch", "numpy", "SimpleITK"):
        try:
            lines.append(f"{dist}=={importlib.metadata.version(dist)}\n")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "".join(lines)


def _write_constraints() -> str | None:
    """`pinned_constraints()` in a temporary file (its path), or None when nothing is installed to pin."""
    text = pinned_constraints()
    if not text:
        return None
    fd, path = tempfile.mkstemp(prefix="brats-mamba-constraints-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path
