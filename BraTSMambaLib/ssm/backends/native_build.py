"""Compile a C source of this package into a shared library once per machine, and cache it.

No build step at install time and no torch headers: the system C compiler (`$CC`, else cc, gcc or clang)
turns one self-contained C file into a shared library in `<cache>/kernels/`, named by a hash of the
source, the compiler, its flags and the CPU's features, so a changed source, compiler or CPU builds anew
and an unchanged one is loaded at once. The library is written to a temporary name and renamed into place, so concurrent first
uses never load half a file. Where no compiler works, `NativeBuildError` says why in one line and the
callers fall back (see `c_scan.is_available`).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

from BraTSMambaLib.cache import cache_dir

#: Flag sets tried in order: tuned for this CPU, then portable.
FLAG_SETS: tuple[tuple[str, ...], ...] = (
    ("-O3", "-march=native", "-fno-math-errno", "-Wno-psabi"),
    ("-O3", "-fno-math-errno"),
)
BUILD_TIMEOUT_S = 120


class NativeBuildError(RuntimeError):
    """The C source could not be compiled or loaded here."""


def find_compiler() -> str:
    """`$CC`, else the first of cc, gcc, clang on PATH."""
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return shutil.which(cand)  # type: ignore[return-value]
    raise NativeBuildError("no C compiler found (install gcc or clang, or set CC)")


def _compiler_id(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeBuildError(f"{cc} --version failed: {e}") from e
    return out.splitlines()[0] if out else cc


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU's feature flags on Linux, else the processor name. Part of
    the cache key, so a cache folder shared by different machines (a cluster's home) never hands one
    machine code built for another's instruction set."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.split(":")[0].strip() in ("flags", "Features"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()   # no /proc/cpuinfo (macOS, Windows)


@functools.cache
def load_library(source: Path) -> ctypes.CDLL:
    """The compiled and loaded library of `source` (built on the first call on this machine)."""
    cc = find_compiler()
    text = source.read_bytes()
    ident = f"{_compiler_id(cc)}|{platform.machine()}|{platform.system()}|{_cpu_id()}".encode()
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(text + ident + " ".join(flags).encode()).hexdigest()[:16]
        target = cache_dir() / "kernels" / f"{source.stem}-{key}.so"
        if not target.is_file():
            try:
                _compile(cc, source, flags, target)
            except NativeBuildError as e:
                errors.append(str(e))
                continue
        try:
            return ctypes.CDLL(str(target))
        except OSError as e:
            errors.append(f"{target} does not load: {e}")
    raise NativeBuildError("; ".join(errors))


def _compile(cc: str, source: Path, flags: tuple[str, ...], target: Path) -> None:
    from BraTSMambaLib.data.io import atomic_path
    from BraTSMambaLib.errors import BraTSInputError

    try:
        with atomic_path(target, overwrite=True) as tmp:
            cmd = [cc, *flags, "-shared", "-fPIC", "-o", str(tmp), str(source)]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
            except (OSError, subprocess.SubprocessError) as e:
                raise NativeBuildError(f"{' '.join(cmd)}: {e}") from e
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["no message"])[-1]
                raise NativeBuildError(f"{Path(cc).name} {' '.join(flags)} could not compile {source.name}: {last}")
    except BraTSInputError as e:
        raise NativeBuildError(f"cannot write {target}: {e}") from e
