"""Compile a CUDA source of this package at run time with NVRTC, cache the cubin, load and launch it.

No build step at install time and no CUDA toolkit: NVRTC ships with PyTorch's CUDA wheels, and the
driver loads the cubin. A variant (the source plus `#define`s) is compiled once per GPU architecture
and NVRTC version into `<cache>/kernels/`, named by their hash and written atomically; later processes
load it at once. PyTorch's own NVRTC and driver bindings are used (`torch.cuda._utils`, the code behind
`torch.cuda._compile_kernel`): they are private, so anything missing or failing raises `NvrtcError` with
the reason, and the callers fall back (`cuda_scan.is_available`).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
from pathlib import Path

import torch

from BraTSMambaLib.cache import cache_dir

#: NVRTC flags: -O3 is NVRTC's default; fast math lets exp/log be the hardware approximations; functions
#: without an execution space (generic lambdas) are device functions.
FLAGS: tuple[str, ...] = ("--use_fast_math", "-std=c++17", "-default-device")


class NvrtcError(RuntimeError):
    """A CUDA source could not be compiled, loaded or launched here."""


def _utils():
    try:
        from torch.cuda import _utils as u
    except ImportError as e:
        raise NvrtcError(f"this PyTorch has no NVRTC helpers: {e}") from e
    missing = [n for n in ("_cuda_load_module", "_check_cuda") if not hasattr(u, n)]
    if missing:
        raise NvrtcError(f"this PyTorch ({torch.__version__}) lacks torch.cuda._utils.{', '.join(missing)}")
    return u


def _library(*names: str) -> ctypes.CDLL:
    """The first of PyTorch's loaders `names` that exists (they were renamed across releases)."""
    u = _utils()
    for name in names:
        if hasattr(u, name):
            return getattr(u, name)()
    raise NvrtcError(f"this PyTorch ({torch.__version__}) has none of torch.cuda._utils.{', '.join(names)}")


def _nvrtc() -> ctypes.CDLL:
    return _library("_get_gpu_rtc_library", "_get_nvrtc_library")


def _driver() -> ctypes.CDLL:
    return _library("_get_gpu_runtime_library", "_get_cuda_library")


def _nvrtc_version(lib) -> str:
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return f"{major.value}.{minor.value}"


def _compile(source: str, name: str, arch: str) -> bytes:
    """cubin of `source` for sm_`arch` (NVRTC, no include paths: the source is self-contained)."""
    lib = _nvrtc()
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None):
        raise NvrtcError("nvrtcCreateProgram failed")
    try:
        opts = [f"--gpu-architecture=sm_{arch}".encode(), *(f.encode() for f in FLAGS)]
        res = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        if res:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            first = next((ln for ln in log.value.decode(errors="replace").splitlines() if "error" in ln), "")
            raise NvrtcError(f"NVRTC could not compile {name}.cu for sm_{arch}: {first or f'code {res}'}")
        size = ctypes.c_size_t()
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        cubin = ctypes.create_string_buffer(size.value)
        if lib.nvrtcGetCUBIN(prog, cubin):
            raise NvrtcError("nvrtcGetCUBIN failed")
        return cubin.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def cubin(source: Path, defines: dict[str, str], device: torch.device) -> bytes:
    """The compiled variant of `source` with `defines` for `device`'s architecture (cached on disk)."""
    major, minor = torch.cuda.get_device_capability(device)
    arch = f"{major}{minor}"
    text = "".join(f"#define {k} {v}\n" for k, v in sorted(defines.items())) + source.read_text()
    lib = _nvrtc()
    key = hashlib.sha256(f"{text}|{arch}|{_nvrtc_version(lib)}|{FLAGS}".encode()).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"{source.stem}-sm{arch}-{key}.cubin"
    if path.is_file():
        return path.read_bytes()
    data = _compile(text, source.stem, arch)
    from BraTSMambaLib.data.io import atomic_path
    from BraTSMambaLib.errors import BraTSInputError

    try:
        with atomic_path(path, overwrite=True) as tmp:
            tmp.write_bytes(data)
    except (OSError, BraTSInputError) as e:
        raise NvrtcError(f"cannot cache the compiled kernel in {path.parent}: {e}") from e
    return data


@functools.lru_cache(maxsize=64)
def _load(source: Path, defines: tuple[tuple[str, str], ...], name: str, device_index: int):
    with torch.cuda.device(device_index):
        binary = cubin(source, dict(defines), torch.device("cuda", device_index))
        try:
            module = _utils()._cuda_load_module(binary, [name])
        except Exception as e:  # noqa: BLE001 - a driver refusal: report it, the caller falls back
            raise NvrtcError(f"the driver did not load {source.name}: {type(e).__name__}: {e}") from e
    return module[name] if isinstance(module, dict) else getattr(module, name)


def kernel(source: Path, defines: dict[str, str], name: str, device: torch.device):
    """The loaded kernel `name` of a variant of `source`, for `device` (compiled on first use)."""
    return _load(source, tuple(sorted(defines.items())), name, torch.device(device).index or 0)


def pointer(t: torch.Tensor | None) -> ctypes.c_void_p:
    """A kernel argument for tensor `t`'s data (null for None)."""
    return ctypes.c_void_p(None if t is None else t.data_ptr())


def launch(fn, grid: tuple[int, int, int], block: tuple[int, int, int], args: list, shared: int = 0) -> None:
    """Launch `fn` on the current stream; `args` are ctypes values in the kernel's parameter order, `shared`
    the bytes of dynamic shared memory (over 48 KB only after `allow_shared`)."""
    u = _utils()
    ptrs = (ctypes.c_void_p * len(args))(*(ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args))
    stream = torch.cuda.current_stream()
    u._check_cuda(_driver().cuLaunchKernel(
        fn.func, *grid, *block, shared, ctypes.c_void_p(stream.cuda_stream), ptrs, None))


#: CUfunction_attribute CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (cuda.h)
_MAX_DYNAMIC_SHARED = 8


def allow_shared(fn, nbytes: int) -> None:
    """Let launches of the loaded kernel `fn` ask for `nbytes` of dynamic shared memory (the driver refuses
    more than 48 KB unless told; NvrtcError if this GPU has less)."""
    try:
        _utils()._check_cuda(_driver().cuFuncSetAttribute(fn.func, ctypes.c_int(_MAX_DYNAMIC_SHARED),
                                                          ctypes.c_int(nbytes)))
    except Exception as e:  # noqa: BLE001 - a driver refusal: report it, the caller falls back
        raise NvrtcError(f"the driver refused {nbytes} bytes of shared memory: {type(e).__name__}: {e}") from e


@functools.lru_cache(maxsize=64)
def _resident_blocks(func_handle: int, threads: int, shared: int) -> int:
    n = ctypes.c_int()
    try:
        _utils()._check_cuda(_driver().cuOccupancyMaxActiveBlocksPerMultiprocessor(
            ctypes.byref(n), ctypes.c_void_p(func_handle), ctypes.c_int(threads), ctypes.c_size_t(shared)))
    except Exception as e:  # noqa: BLE001 - a driver refusal: report it, the caller falls back
        raise NvrtcError(f"the driver's occupancy calculator failed: {type(e).__name__}: {e}") from e
    return max(1, n.value)


def resident_blocks(fn, threads: int, shared: int = 0) -> int:
    """How many blocks of `threads` threads of the loaded kernel `fn`, each with `shared` bytes of dynamic
    shared memory, fit on one multiprocessor at once (the driver's occupancy calculator: registers, shared
    memory, warps)."""
    handle = fn.func.value if hasattr(fn.func, "value") else fn.func
    return _resident_blocks(int(handle), threads, shared)
