"""Selective-scan benchmark on SegMamba's stage shapes, for every backend available on the device.

  python benchmarks/scan.py                              # auto device; CPU: batch 1, GPU: batch 2
  python benchmarks/scan.py --device cpu --threads 1 --stages 0 1
  python benchmarks/scan.py --device cuda --json out.json
  python benchmarks/scan.py --device cuda --stages 0 --torch-sweep chunk=16 chunk=32,block=268435456

Shapes (E, L), N = 16: stage 0 (96, 64^3), 1 (192, 32^3), 2 (384, 16^3), 3 (768, 8^3); inputs as a Mamba layer
passes them (z, D, delta_bias from mamba's dt initialisation, delta_softplus, A = -(1..N)).

Rows: every backend of `BraTSMambaLib.ssm` available on the device (mamba_ssm, triton, c, torch, reference) plus
PyPI `mambapy`'s Blelloch parallel scan (`pscan`) when installed; other candidates can be added with
`register(name, fn)`. Each row gives forward and forward+backward time (median of --repeats after one
warm-up), peak extra memory, and the speed ratio to the baseline measured in the same run (mamba_ssm on
CUDA, else the torch backend). Candidates whose cost would be too high at a shape (the Python-loop
reference, mambapy's full (b, L, E, N) tensors) are run at a shorter L and scaled linearly to the full L;
such rows are marked "~" with the L actually run.

Memory: CUDA = peak allocated during the call above what was allocated before; CPU = peak resident set
size above the level before the first call, sampled every 2 ms (Linux /proc; elsewhere ru_maxrss), each
CPU measurement in a fresh process so that memory kept by the C allocator from earlier runs hides nothing.

--torch-sweep adds one torch-backend row per setting, each a comma-separated list of key=value with keys
chunk, step, block, mode, carry (the BRATSMAMBA_SCAN_TORCH_* variables of docs/ssm.md), set for that row's
calls only: several settings are compared in one process (one device call).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envvars import set_env  # noqa: E402

from BraTSMambaLib.ssm import BACKENDS, backend_status, selective_scan  # noqa: E402
from BraTSMambaLib.ssm.selective_scan import forward_only  # noqa: E402

N = 16
STAGES: tuple[tuple[int, int], ...] = ((96, 64 ** 3), (192, 32 ** 3), (384, 16 ** 3), (768, 8 ** 3))


@dataclass
class Candidate:
    name: str
    fn: Callable[..., torch.Tensor]
    #: state elements (batch * E * L * N) above which the candidate runs at a shorter L and is extrapolated
    max_state_elements: int | None = None
    #: run in this process even on CPU (candidates a fresh process could not rebuild by name)
    in_process: bool = False
    #: environment variables set while this candidate is measured (forward and backward)
    env: dict | None = None
    #: no backward pass (the C backend): its forward+backward columns stay empty
    forward_only: bool = False


@dataclass
class Row:
    stage: int
    batch: int
    E: int
    L: int
    backend: str
    L_run: int
    fwd_ms: float | None = None
    fwdbwd_ms: float | None = None
    fwd_peak_mb: float | None = None
    fwdbwd_peak_mb: float | None = None
    fwd_ratio: float | None = None
    fwdbwd_ratio: float | None = None
    fwd_cpu_ms: float | None = None       # CPU devices: process CPU time (all threads), robust to a busy machine
    fwdbwd_cpu_ms: float | None = None
    error: str | None = None


_EXTRA: list[Candidate] = []


def register(name: str, fn: Callable[..., torch.Tensor], max_state_elements: int | None = None) -> None:
    """Add a candidate scan fn(u, delta, A, B, C, D, z, delta_bias) -> y to every run."""
    _EXTRA.append(Candidate(name, fn, max_state_elements))


SWEEP_KEYS = {"chunk": "BRATSMAMBA_SCAN_TORCH_CHUNK", "step": "BRATSMAMBA_SCAN_TORCH_STEP",
              "block": "BRATSMAMBA_SCAN_TORCH_BLOCK", "mode": "BRATSMAMBA_SCAN_TORCH_MODE",
              "carry": "BRATSMAMBA_SCAN_TORCH_CARRY"}


def torch_setting(spec: str) -> Candidate:
    """A torch-backend candidate run with the BRATSMAMBA_SCAN_TORCH_* variables of `spec` ("chunk=16,mode=block")."""
    env = {}
    for item in filter(None, spec.split(",")):
        key, _, val = item.partition("=")
        if key.strip() not in SWEEP_KEYS or not val.strip():
            raise SystemExit(f"--torch-sweep {spec!r}: expected key=value with keys {', '.join(SWEEP_KEYS)}")
        env[SWEEP_KEYS[key.strip()]] = val.strip()
    return Candidate(f"torch[{spec}]", _ours("torch"), in_process=True, env=env)


def cuda_kernel(kind: str) -> Candidate:
    """The cuda backend with BRATSMAMBA_SCAN_CUDA_KERNEL=`kind` ("rows" or "lanes")."""
    from BraTSMambaLib.ssm.backends.cuda_scan import KERNEL_ENV, KERNELS

    if kind not in KERNELS:
        raise SystemExit(f"--cuda-kernels {kind!r}: expected one of {', '.join(KERNELS)}")
    return Candidate(f"cuda[{kind}]", _ours("cuda"), env={KERNEL_ENV: kind}, forward_only=forward_only("cuda"))


def _ours(name: str) -> Callable[..., torch.Tensor]:
    def fn(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, True, backend=name)
    return fn


def _mambapy():
    try:
        from mambapy.pscan import pscan
    except ImportError:
        return None

    def fn(u, delta, A, B, C, D, z, delta_bias):
        # mambapy's own selective_scan math (mamba.py), on (b, L, E, N) tensors, + our bias/softplus/z
        dt = torch.nn.functional.softplus(delta + delta_bias.unsqueeze(-1)).transpose(1, 2)   # (b, L, E)
        x = u.transpose(1, 2)
        deltaA = torch.exp(dt.unsqueeze(-1) * A)
        BX = dt.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2) * x.unsqueeze(-1)
        hs = pscan(deltaA, BX)
        y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3) + D * x
        return (y * torch.nn.functional.silu(z.transpose(1, 2))).transpose(1, 2)
    return fn


def candidates(device: torch.device, names: list[str] | None, include_reference: bool,
               quiet: bool = False) -> list[Candidate]:
    out = []
    for name in BACKENDS:
        if names and name not in names:
            continue
        if name == "reference" and not include_reference:
            continue
        ok, why = backend_status(name, device)
        if not ok:
            if not quiet:
                print(f"# {name}: unavailable on {device}: {why}")
            continue
        cap = 96 * 4096 * N if name == "reference" else None
        out.append(Candidate(name, _ours(name), cap, forward_only=forward_only(name)))
    mp = _mambapy()
    if mp is not None and (not names or "mambapy" in names):
        cap = 2 ** 27 if device.type == "cpu" else 2 ** 29
        out.append(Candidate("mambapy", mp, cap))
    elif mp is None and not quiet:
        print("# mambapy: not installed (pip install mambapy) - Blelloch-scan comparison skipped")
    return out + [c for c in _EXTRA if not names or c.name in names]


def make_inputs(b: int, E: int, L: int, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)
    dt = torch.exp(torch.rand(E, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp_min(1e-4)
    t = dict(u=torch.randn(b, E, L, generator=g).to(dtype), delta=(0.5 * torch.randn(b, E, L, generator=g)).to(dtype),
             A=-torch.arange(1, N + 1, dtype=torch.float32).repeat(E, 1),
             B=torch.randn(b, N, L, generator=g).to(dtype), C=torch.randn(b, N, L, generator=g).to(dtype),
             D=torch.ones(E), z=torch.randn(b, E, L, generator=g).to(dtype),
             delta_bias=dt + torch.log(-torch.expm1(-dt)))
    return {k: v.to(device) for k, v in t.items()}


class _PeakRSS:
    """Peak resident memory above the starting level, sampled in a thread (CPU runs)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self):
        self.base = self.rss()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss() - self.base)


def _measure(fn: Callable[[], None], device: torch.device, repeats: int) -> tuple[float, float, float]:
    """(median wall ms and median process-CPU ms over `repeats` calls after one warm-up call, peak extra
    MB over all calls).

    On CPU the warm-up call counts for memory: afterwards the C allocator reuses the freed blocks and the
    resident size no longer grows. Each CPU measurement runs in a fresh process (see `main`).
    """
    times, cpu, peak = [], [], 0.0
    if device.type == "cuda":
        fn()
    else:
        with _PeakRSS() as p:
            fn()
        peak = p.peak / 2 ** 20
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            peak = max(peak, (torch.cuda.max_memory_allocated() - base) / 2 ** 20)
        else:
            with _PeakRSS() as p:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            peak = max(peak, p.peak / 2 ** 20)
    return statistics.median(times) * 1e3, (statistics.median(cpu) * 1e3 if cpu else None), peak


def bench_one(cand: Candidate, stage: int, b: int, E: int, L: int, device: torch.device, dtype: torch.dtype,
              repeats: int, backward: bool) -> Row:
    with set_env(cand.env):
        return _bench_one(cand, stage, b, E, L, device, dtype, repeats, backward)


def _bench_one(cand: Candidate, stage: int, b: int, E: int, L: int, device: torch.device, dtype: torch.dtype,
               repeats: int, backward: bool) -> Row:
    L_run = L
    if cand.max_state_elements and b * E * L * N > cand.max_state_elements:
        L_run = max(1, 2 ** int(math.log2(cand.max_state_elements // (b * E * N))))
    row = Row(stage, b, E, L, cand.name, L_run)
    scale = L / L_run
    try:
        t = make_inputs(b, E, L_run, device, dtype)

        def fwd():
            with torch.no_grad():
                cand.fn(**t)

        ms, cms, mb = _measure(fwd, device, repeats)
        row.fwd_ms, row.fwd_peak_mb = ms * scale, mb * scale
        row.fwd_cpu_ms = cms * scale if cms is not None else None
        if backward and not cand.forward_only:
            leaves = {k: (v.detach().requires_grad_() if v.is_floating_point() else v) for k, v in t.items()}
            gy = torch.randn(b, E, L_run, device=device, dtype=dtype)

            def fwdbwd():
                y = cand.fn(**leaves)
                torch.autograd.grad(y, [v for v in leaves.values() if v.requires_grad], gy)

            ms, cms, mb = _measure(fwdbwd, device, repeats)
            row.fwdbwd_ms, row.fwdbwd_peak_mb = ms * scale, mb * scale
            row.fwdbwd_cpu_ms = cms * scale if cms is not None else None
    except Exception as e:  # one failing candidate (e.g. out of memory) must not hide the others
        row.error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _bench_in_child(name: str, stage: int, b: int, E: int, L: int, device: str, dtype: str, repeats: int,
                    backward: bool, threads: int | None, include_ref: bool) -> Row:
    """Run one measurement in this (fresh) process: resident-memory peaks are not hidden by earlier runs."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    cand = next(c for c in candidates(dev, [name], include_ref, quiet=True) if c.name == name)
    return bench_one(cand, stage, b, E, L, dev, getattr(torch, dtype), repeats, backward)


def _run(cand: Candidate, stage: int, b: int, E: int, L: int, device: torch.device, dtype: torch.dtype,
         repeats: int, backward: bool, threads: int | None, include_ref: bool) -> Row:
    if device.type != "cpu" or cand in _EXTRA or cand.in_process:
        return bench_one(cand, stage, b, E, L, device, dtype, repeats, backward)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return ex.submit(_bench_in_child, cand.name, stage, b, E, L, str(device), str(dtype).split(".")[-1],
                         repeats, backward, threads, include_ref).result()


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[Row], baseline: str) -> None:
    print(f"\n{'stage':>5} {'b':>2} {'E':>4} {'L':>7} {'backend':<10} {'fwd ms':>10} {'fwd+bwd ms':>11} "
          f"{'fwd MB':>8} {'f+b MB':>8} {f'x {baseline} fwd':>14} {'f+b':>6} {'fwd CPU ms':>11} {'f+b CPU ms':>11}")
    for r in rows:
        mark = "~" if r.L_run != r.L else " "
        name = r.backend + (f" (L={r.L_run})" if r.L_run != r.L else "")
        if r.error:
            print(f"{r.stage:>5} {r.batch:>2} {r.E:>4} {r.L:>7} {name:<10} error: {r.error}")
            continue
        print(f"{r.stage:>5} {r.batch:>2} {r.E:>4} {r.L:>7} {name:<10} {mark}{_fmt(r.fwd_ms, '9.2f')} "
              f"{mark}{_fmt(r.fwdbwd_ms, '10.2f')} {_fmt(r.fwd_peak_mb, '8.0f')} {_fmt(r.fwdbwd_peak_mb, '8.0f')} "
              f"{_fmt(r.fwd_ratio, '14.2f')} {_fmt(r.fwdbwd_ratio, '6.2f')} {_fmt(r.fwd_cpu_ms, '11.1f')} "
              f"{_fmt(r.fwdbwd_cpu_ms, '11.1f')}")
    print(f"\n'~': measured at the shorter L shown and scaled linearly to the full L. 'x {baseline}': time of "
          f"{baseline} / time of the row (> 1 = faster than {baseline}). CPU ms: process CPU time of all "
          f"threads (CPU runs only; wall time above it means the machine was busy with other work).")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, mps")
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3], choices=range(4))
    p.add_argument("--batch", type=int, default=None, help="default: 2 on CUDA, 1 elsewhere")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--backends", nargs="+", default=None,
                   help="subset of: " + ", ".join(BACKENDS) + ", mambapy (default: all available)")
    p.add_argument("--reference", choices=("auto", "yes", "no"), default="auto",
                   help="include the Python-loop reference (auto: on CPU only; always at L <= 4096 and scaled)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default: 10 CUDA, 1 CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--torch-sweep", nargs="+", default=[], metavar="SETTING",
                   help="extra torch-backend rows, each e.g. chunk=16,step=4194304,block=268435456,mode=block,carry=8")
    p.add_argument("--cuda-kernels", nargs="+", default=[], metavar="KIND",
                   help="extra rows of the cuda backend with BRATSMAMBA_SCAN_CUDA_KERNEL=KIND (rows, lanes)")
    p.add_argument("--baseline", default=None, help="ratio column reference (default: mamba_ssm on CUDA, else torch)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    b = args.batch or (2 if device.type == "cuda" else 1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    repeats = args.repeats or (10 if device.type == "cuda" else 1)
    include_ref = args.reference == "yes" or (args.reference == "auto" and device.type == "cpu")
    cands = candidates(device, args.backends, include_ref) + [torch_setting(x) for x in args.torch_sweep]
    cands += [cuda_kernel(k) for k in args.cuda_kernels]
    names = [c.name for c in cands]
    baseline = args.baseline or ("mamba_ssm" if "mamba_ssm" in names else "torch")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"# device {device} ({dev_name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {b}, {args.dtype}, N {N}, repeats {repeats}; candidates: {', '.join(names)}")

    rows: list[Row] = []
    for stage in args.stages:
        E, L = STAGES[stage]
        stage_rows = []
        for cand in cands:
            r = _run(cand, stage, b, E, L, device, dtype, repeats, not args.no_backward, args.threads, include_ref)
            print(f"# stage {stage} {cand.name}: fwd {_fmt(r.fwd_ms, '.2f')} ms, fwd+bwd {_fmt(r.fwdbwd_ms, '.2f')} ms"
                  + (f" (L={r.L_run}, scaled)" if r.L_run != L else "") + (f" ERROR {r.error}" if r.error else ""),
                  flush=True)
            stage_rows.append(r)
        base = next((r for r in stage_rows if r.backend == baseline and not r.error), None)
        for r in stage_rows:
            if base and r.fwd_ms:
                r.fwd_ratio = base.fwd_ms / r.fwd_ms
            if base and base.fwdbwd_ms and r.fwdbwd_ms:
                r.fwdbwd_ratio = base.fwdbwd_ms / r.fwdbwd_ms
        rows.extend(stage_rows)
    print_table(rows, baseline)
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "device_name": dev_name, "torch": torch.__version__,
                                         "threads": torch.get_num_threads(), "dtype": args.dtype,
                                         "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
