"""Run a test module's function under Triton's CPU interpreter, in a subprocess (TRITON_INTERPRET must be
set before triton is imported, so it cannot be switched on inside the test process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTING = Path(__file__).resolve().parent


def run_in_interpreter(module: str, function: str, timeout: float = 600) -> dict:
    """`module.function()` (its result must be JSON) evaluated with TRITON_INTERPRET=1."""
    code = (f"import sys, json; sys.path.insert(0, {str(TESTING)!r}); import {module} as t; "
            f"print('RESULTS=' + json.dumps(t.{function}()))")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, TRITON_INTERPRET="1"),
                          cwd=TESTING.parent, capture_output=True, text=True, check=False, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS=")][-1]
    return json.loads(line[len("RESULTS="):])
