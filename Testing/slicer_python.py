"""Code prelude for a child Python that sees only what 3D Slicer ships: importing a package the extension
installs later (torch, MONAI, nnU-Net, ...) raises ImportError, as it would before the first-use install."""
from __future__ import annotations

NOT_SHIPPED = ("torch", "monai", "nnunetv2", "nibabel", "nilearn", "safetensors", "slicerio", "tqdm", "matplotlib",
               "scipy")


def without_extension_packages(*paths: str) -> str:
    """Python source that blocks NOT_SHIPPED and puts `paths` first on sys.path; append the code to run."""
    return f"""
import importlib.abc, json, sys
BLOCK = {set(NOT_SHIPPED)!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError(f"{{name}} is not shipped with Slicer")
sys.meta_path.insert(0, Block())
sys.path[:0] = {list(paths)!r}
"""
