"""Shared pytest fixtures: paths to the real BraTS cases in ../shared/data, markers, tiny volumes."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_data = pytest.mark.skip(reason=f"needs real BraTS cases in {SHARED_DATA}")
    has_cuda, has_data = _cuda(), SHARED_DATA.is_dir()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "shared_data" in item.keywords and not has_data:
            item.add_marker(skip_data)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; tests using it must also carry the `shared_data` marker."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs real BraTS cases in {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def brats2018_cases(shared_data: Path) -> list[Path]:
    return sorted(p for p in (shared_data / "brats2018").iterdir() if p.is_dir())
