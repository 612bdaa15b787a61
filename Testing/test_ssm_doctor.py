"""`brats-mamba doctor`: devices, backend availability with reasons, the auto choice, versions."""
from __future__ import annotations

import json

from BraTSMambaLib.cli import main


def test_doctor_json(capsys, monkeypatch):
    monkeypatch.delenv("BRATSMAMBA_SCAN_BACKEND", raising=False)
    assert main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    cpu = rep["devices"][0]
    assert cpu["device"] == "cpu" and cpu["torch_threads"] >= 1
    assert set(cpu["backends"]) == {"mamba_ssm", "cuda", "triton", "c", "torch", "reference"}
    assert cpu["backends"]["torch"]["available"]
    assert cpu["auto"] == ("c" if cpu["backends"]["c"]["available"] else "torch")
    assert not cpu["backends"]["mamba_ssm"]["available"] and cpu["backends"]["mamba_ssm"]["detail"]
    assert rep["versions"]["torch"] and "mamba_ssm" in rep["versions"]


def test_doctor_text_reports_forced_bad_backend(capsys, monkeypatch):
    monkeypatch.setenv("BRATSMAMBA_SCAN_BACKEND", "nope")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "BRATSMAMBA_SCAN_BACKEND=nope" in out and "auto -> none: unknown scan backend 'nope'" in out
