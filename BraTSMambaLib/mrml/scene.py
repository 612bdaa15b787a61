"""Reading volumes into and saving segmentations from an MRML scene through Slicer's storage nodes.

These work the same inside Slicer and in plain Python with slicer-core, where `slicer.util.loadVolume`
and `slicer.util.saveNode` are unavailable (they need the application's IO manager).
"""
from __future__ import annotations

import os
from pathlib import Path

from BraTSMambaLib.data.io import atomic_path, strip_extension
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.mrml.segmentation import register_converter_rules


def new_scene():
    """An empty MRML scene ready for segmentations (converter rules registered)."""
    import slicer

    register_converter_rules()
    return slicer.vtkMRMLScene()


def load_volume(scene, path: str | os.PathLike, name: str | None = None):
    """Read an image file (NIfTI, NRRD, MHA...) into a new scalar volume node, as Slicer's Add Data does."""
    import slicer

    p = Path(path)
    if not p.is_file():
        raise BraTSInputError(f"{p}: file not found")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(p))
    storage.SetSingleFile(True)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or strip_extension(p))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise BraTSInputError(f"{p}: Slicer cannot read it as a volume")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def save_node(node, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a node through its default storage node (.seg.nrrd for segmentations), atomically.

    The storage node writes to a temporary name in the target folder that is renamed on success,
    so a failed write leaves nothing at `path`.
    """
    target = Path(path)
    scene = node.GetScene()
    storage = node.CreateDefaultStorageNode()
    if storage is None:
        raise RuntimeError(f"node '{node.GetName()}' has no storage node class")
    scene.AddNode(storage)
    try:
        with atomic_path(target, overwrite=overwrite) as tmp:
            storage.SetFileName(str(tmp))
            storage.SetUseCompression(True)
            if not storage.WriteData(node):
                raise BraTSInputError(f"{target}: Slicer could not write '{node.GetName()}'")
    finally:
        scene.RemoveNode(storage)
    return target
