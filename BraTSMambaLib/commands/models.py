"""`brats-mamba models`: the registered networks, their size, input constraints and scan backends."""
from __future__ import annotations

import argparse
import json
from typing import Any

NAME = "models"
HELP = "list the segmentation networks (parameters, patch-size rules, deep supervision, scan backends)"
DESCRIPTION = """List every network the registry can build, in its default BraTS configuration
(4 inputs T1, T1ce, T2, FLAIR; 3 region outputs WT, TC, ET).

For networks with Mamba layers, the scan backends column says which selective-scan
implementations can run on this machine (CPU, and the GPU when there is one); the
layers pick the fastest available one unless BRATSMAMBA_SCAN_BACKEND forces another.

Parameter counts are exact; they are computed on PyTorch's meta device (no memory).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("name", nargs="*", help="only these models (default: all)")


def _devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def describe(name: str) -> dict[str, Any]:
    """One model's row: spec facts, parameter count and scan-backend availability."""
    from BraTSMambaLib.nets import get_spec, parameter_count
    from BraTSMambaLib.ssm import BACKENDS, backend_status

    spec = get_spec(name)
    row: dict[str, Any] = {
        "name": spec.name,
        "title": spec.title,
        "parameters": parameter_count(spec.name),
        "divisor": spec.divisor,
        "min_size": spec.min_size,
        "recommended_patch_size": list(spec.recommended_patch_size),
        "fixed_input_size": spec.fixed_input_size,
        "deep_supervision": spec.supports_deep_supervision,
        "uses_mamba": spec.uses_mamba,
        "inputs": list(spec.modalities),
        "outputs": list(spec.regions),
        "reference": spec.reference,
        "scan_backends": {},
    }
    if spec.uses_mamba:
        for dev in _devices():
            row["scan_backends"][dev] = {b: dict(zip(("available", "reason"), backend_status(b, dev)))
                                         for b in BACKENDS}
    return row


def _backend_text(row: dict[str, Any]) -> str:
    if not row["uses_mamba"]:
        return "-"
    parts = []
    for dev, table in row["scan_backends"].items():
        ok = [b for b, s in table.items() if s["available"]]
        parts.append(f"{dev}: {','.join(ok) or 'none'}")
    return "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    from BraTSMambaLib.nets import list_models

    names = args.name or list_models()
    rows = [describe(n) for n in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = ("name", "parameters", "patch sides", "deep sup.", "scan backends")
    table = [(r["name"], f"{r['parameters']:,}",
              f"x{r['divisor']}, >={r['min_size']}" + (" (fixed)" if r["fixed_input_size"] else ""),
              "yes" if r["deep_supervision"] else "no", _backend_text(r)) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *table]) for i in range(len(head))]
    for line in [head, *table]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    print("\nParameters: default BraTS configuration (4 inputs, 3 regions), deep supervision off. Recommended patch "
          "size 128x128x128 for all; sides are (z, y, x) in voxels. Sources: brats-mamba models --json.")
    return 0
