"""`brats-mamba doctor`: what this machine can run - devices, selective-scan backends, package versions."""
from __future__ import annotations

import argparse
import json
import os
import platform

NAME = "doctor"
HELP = "show devices, which selective-scan backends are available (and why not), and package versions"
DESCRIPTION = """\
Report the compute devices (CPU threads, CUDA GPUs with name, compute capability and memory, Apple MPS),
for each device which selective-scan backend is available (mamba_ssm's CUDA kernel, our Triton kernel,
pure PyTorch, the reference loop) with the reason when one is not, which backend `auto` selects there,
and the versions of torch, triton, mamba_ssm, numpy, SimpleITK, nnunetv2 and monai.

The environment variable BRATSMAMBA_SCAN_BACKEND forces a backend everywhere (auto, mamba_ssm, triton,
torch, reference); a forced backend that cannot run is an error, never a silent fallback.

exit status: 0 always (the report is the result)."""

PACKAGES: tuple[str, ...] = ("torch", "triton", "mamba_ssm", "causal_conv1d", "numpy", "SimpleITK", "nnunetv2",
                             "monai")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for name in (dist, dist.replace("_", "-")):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def collect() -> dict:
    """The doctor report as a dict (no package is imported except torch)."""
    import torch

    from BraTSMambaLib.errors import BackendUnavailableError
    from BraTSMambaLib.ssm.selective_scan import BACKENDS, ENV_VAR, LONG_SEQUENCE, backend_status, resolve_backend

    devices = [{"device": "cpu", "kind": "cpu", "name": platform.processor() or platform.machine(),
                "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"device": f"cuda:{i}", "kind": "cuda", "name": p.name,
                            "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2 ** 30, 1)})
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append({"device": "mps", "kind": "mps", "name": "Apple Metal (MPS)"})
    for dev in devices:
        dev["backends"] = {}
        for name in BACKENDS:
            ok, why = backend_status(name, dev["device"])
            dev["backends"][name] = {"available": ok, "detail": why}
        try:
            dev["auto"] = resolve_backend("auto", dev["device"])
            dev["auto_long"] = resolve_backend("auto", dev["device"], length=LONG_SEQUENCE)
            dev["long_sequence"] = LONG_SEQUENCE
        except BackendUnavailableError as e:
            dev["auto"] = None
            dev["auto_error"] = str(e)
    return {"python": platform.python_version(), "platform": platform.platform(),
            "scan_backend_env": os.environ.get(ENV_VAR) or None, "devices": devices,
            "versions": {p: _version(p) for p in PACKAGES}}


def format_report(rep: dict) -> str:
    lines = [f"Python {rep['python']} on {rep['platform']}"]
    if rep["scan_backend_env"]:
        lines.append(f"BRATSMAMBA_SCAN_BACKEND={rep['scan_backend_env']} (forces the scan backend)")
    for dev in rep["devices"]:
        if dev["kind"] == "cpu":
            head = f"cpu: {dev['name']}, {dev['cores']} cores, torch uses {dev['torch_threads']} threads"
        elif dev["kind"] == "cuda":
            head = f"{dev['device']}: {dev['name']}, compute capability {dev['capability']}, {dev['memory_gib']} GiB"
        else:
            head = f"{dev['device']}: {dev['name']}"
        lines.append(head)
        for name, st in dev["backends"].items():
            lines.append(f"  {'+' if st['available'] else '-'} {name:<10} {st['detail']}")
        lines.append(f"  auto -> {dev['auto']}" if dev["auto"] else f"  auto -> none: {dev['auto_error']}")
        if dev.get("auto_long") and dev["auto_long"] != dev["auto"]:
            lines.append(f"  auto at inference, sequences of {dev['long_sequence']} positions or more -> {dev['auto_long']}")
    lines.append("versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in rep["versions"].items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rep = collect()
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0
