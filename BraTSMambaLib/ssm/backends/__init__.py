"""Selective-scan backends. Each module exposes `selective_scan(...)` (mamba_ssm's semantics) and
`is_available(device) -> (bool, reason)`. They are imported lazily: importing this package imports none.
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: Backend name -> module, fastest first (`selective_scan.AUTO_ORDER` gives the order per device).
MODULES: dict[str, str] = {
    "mamba_ssm": "BraTSMambaLib.ssm.backends.mamba_ssm_backend",
    "cuda": "BraTSMambaLib.ssm.backends.cuda_scan",
    "triton": "BraTSMambaLib.ssm.backends.triton_scan",
    "c": "BraTSMambaLib.ssm.backends.c_scan",
    "torch": "BraTSMambaLib.ssm.backends.torch_scan",
    "reference": "BraTSMambaLib.ssm.backends.reference",
}


def load(name: str) -> tuple[ModuleType | None, str]:
    """Import backend `name`; (module, "") or (None, why it cannot be imported)."""
    path = MODULES[name]
    try:
        return importlib.import_module(path), ""
    except ModuleNotFoundError as e:
        if e.name == path:
            return None, f"module {path} is not part of this installation"
        return None, f"{path} needs a missing package: {e.name}"
    except Exception as e:
        return None, f"{path} failed to import: {type(e).__name__}: {e}".splitlines()[0]
