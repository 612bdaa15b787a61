"""Reading the ssm package's BRATSMAMBA_* environment settings: positive integers, 0/1 switches and named choices, each
read at the call that uses it (so a process can compare settings), with one error message per kind."""
from __future__ import annotations

import os


def env_int(name: str, default: int | None, *, auto: bool = False) -> int | None:
    """A positive integer from `name` (32, 4194304, 0x400000 or 4e6); `default` when unset (or "auto" where
    `auto` allows it); ValueError naming the variable otherwise."""
    v = os.environ.get(name, "").strip()
    if not v or (auto and v.lower() == "auto"):
        return default
    try:
        n = int(v, 0)
    except ValueError:
        try:
            n = int(float(v))
        except ValueError:
            raise ValueError(f"{name}={v!r}: expected a positive integer (e.g. 32, 4194304, 0x400000 or 4e6)"
                             + (" or auto" if auto else "")) from None
    if n < 1:
        raise ValueError(f"{name}={v!r}: expected a positive integer")
    return n


def env_choice(name: str, choices: tuple[str, ...], default: str | None) -> str | None:
    """One of `choices` from `name` (case-insensitive); `default` when unset; ValueError for anything else."""
    v = os.environ.get(name, "").strip().lower()
    if not v:
        return default
    if v not in choices:
        raise ValueError(f"{name}={v!r}: expected one of {', '.join(choices)}")
    return v


def env_switch(name: str, default: bool = True) -> bool:
    """A 0/1 switch from `name`; `default` when unset; ValueError for anything else."""
    v = os.environ.get(name, "").strip()
    if not v:
        return default
    if v not in ("0", "1"):
        raise ValueError(f"{name}={v!r}: expected 0 or 1")
    return v == "1"
