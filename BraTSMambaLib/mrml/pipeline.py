"""Whole jobs on MRML nodes: segment volume nodes in process, or load the CLI's output files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from BraTSMambaLib.data import conventions as cv
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.mrml.case import case_from_volume_nodes
from BraTSMambaLib.mrml.geometry import RAS_TO_LPS, ijk_to_world, node_label
from BraTSMambaLib.mrml.segmentation import grid_shape, segmentation_from_prediction


def segment_volume_nodes(scene, nodes: Mapping[str, object], model=None, device: str = "auto", fast: bool = False,
                         *, name: str = "BraTS tumour", target=None, labels: str = "2021", show3d: bool = True):
    """Segment four volume nodes in this process; returns the WT/TC/ET segmentation node.

    `model` is a catalogue name, a package or nnU-Net results path, an already loaded
    `inference.pipeline.LoadedModel` (to segment many cases with one load), or None for the bundled
    demo package. The regions are those the CLI writes: probabilities -> label map (nnU-Net region
    order) -> regions, so both paths give the same segments. `show3d` builds the closed surfaces
    for 3D views (scripts that only save files can skip it). For scripts, headless Slicer and tests;
    the Slicer module runs the CLI in a separate process instead.
    """
    from BraTSMambaLib.inference.pipeline import LoadedModel, SegmentOptions, load_model, predict_labels

    case = case_from_volume_nodes(nodes)
    options = SegmentOptions(device=device, fast=fast, labels=labels)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, options)
    regions = predict_labels(case, loaded, options).regions
    return segmentation_from_prediction(scene, regions, nodes[cv.REFERENCE_MODALITY], name, target=target,
                                        show3d=show3d)


def read_seg_nrrd_masks(path: str | os.PathLike, reference_node, *, atol: float = 1e-3) -> dict[str, np.ndarray]:
    """(z, y, x) region masks from a `.seg.nrrd` written for `reference_node`'s grid (checked)."""
    import slicerio

    p = Path(path)
    if not p.is_file():
        raise BraTSInputError(f"{p}: file not found")
    try:
        seg = slicerio.read_segmentation(str(p))
    except Exception as e:  # slicerio raises plain exceptions on malformed files
        raise BraTSInputError(f"{p}: cannot be read as a segmentation ({e})") from None
    expected = RAS_TO_LPS @ ijk_to_world(reference_node)
    if not np.allclose(np.asarray(seg["ijkToLPS"], dtype=float), expected, atol=atol):
        raise BraTSInputError(f"{p}: grid does not match {node_label(reference_node)}")
    masks = {}
    for region in cv.REGIONS:
        try:
            mask = slicerio.segment_mask(seg, region)
        except KeyError:
            raise BraTSInputError(f"{p}: has no segment named {region}") from None
        masks[region] = np.ascontiguousarray(np.transpose(mask, (2, 1, 0)))
    shape = grid_shape(reference_node)
    if masks[cv.REGIONS[0]].shape != shape:
        raise BraTSInputError(f"{p}: voxel shape {masks[cv.REGIONS[0]].shape} differs from {node_label(reference_node)} {shape}")
    return masks


def segmentation_from_files(scene, seg_nrrd: str | os.PathLike, reference_node, name: str = "BraTS tumour", *, target=None):
    """Segmentation node from the CLI's `<case>.seg.nrrd`, built as `segmentation_from_prediction` builds it."""
    masks = read_seg_nrrd_masks(seg_nrrd, reference_node)
    return segmentation_from_prediction(scene, masks, reference_node, name, target=target)
