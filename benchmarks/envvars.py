"""`set_env`: environment variables set for one block of a benchmark and restored after it (the package
reads its BRATSMAMBA_* settings at each call, so one process can compare several)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping


@contextlib.contextmanager
def set_env(values: Mapping[str, str] | None) -> Iterator[None]:
    """os.environ updated with `values` inside the block, as it was after it."""
    values = dict(values or {})
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
