"""The per-user cache folder (downloaded and imported model packages, compiled kernels)."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    """Per-user cache: $BRATSMAMBA_CACHE, else ~/Library/Caches, %LOCALAPPDATA% or $XDG_CACHE_HOME/~/.cache."""
    env = os.environ.get("BRATSMAMBA_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "brats-mamba"
