"""Qt-free bridge between MRML nodes and the library: works inside Slicer and with PyPI slicer-core.

Volume nodes (RAS, IJK-to-RAS matrix) become the library's `BraTSCase` (SimpleITK images, LPS);
region predictions become a segmentation node with three overlapping segments WT, TC, ET.
Importing this package does not import `slicer`; the functions do, when called.
"""
from BraTSMambaLib.mrml.case import case_from_volume_nodes, guess_modalities, guess_volume_nodes
from BraTSMambaLib.mrml.pipeline import segment_volume_nodes, segmentation_from_files
from BraTSMambaLib.mrml.scene import load_volume, new_scene, save_node
from BraTSMambaLib.mrml.segmentation import (
    labelmap_from_prediction,
    register_converter_rules,
    segment_masks,
    segment_volumes_ml,
    segmentation_from_prediction,
    volumes_table,
)

__all__ = [
    "case_from_volume_nodes",
    "guess_modalities",
    "guess_volume_nodes",
    "labelmap_from_prediction",
    "load_volume",
    "new_scene",
    "register_converter_rules",
    "save_node",
    "segment_masks",
    "segment_volume_nodes",
    "segment_volumes_ml",
    "segmentation_from_files",
    "segmentation_from_prediction",
    "volumes_table",
]
