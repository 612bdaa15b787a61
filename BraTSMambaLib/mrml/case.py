"""MRML volume nodes -> the library's BraTS case, and modality guessing from node names."""
from __future__ import annotations

from typing import Iterable, Mapping

from BraTSMambaLib.data import conventions as cv
from BraTSMambaLib.data.io import geometry_differences
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.mrml.geometry import image_from_volume_node, node_label


def guess_modalities(names: Iterable[str]) -> dict[str, str]:
    """Map each modality to the first node name that follows a BraTS file naming (2021, 2023, nnU-Net).

    Node names are file names without extension ("Brats18_2013_11_1_t1ce", "BraTS-GLI-00001-000-t1c"),
    so they are matched as if they had one. Label maps ("..._seg") and unmatched names are skipped;
    when names from several cases are loaded, the case with the most modalities wins.
    """
    by_case: dict[str, dict[str, str]] = {}
    for name in names:
        parsed = cv.parse_filename(f"{name}.nii.gz")
        if parsed is None:
            continue
        case_id, key, _naming = parsed
        if key in cv.MODALITIES:
            by_case.setdefault(case_id, {}).setdefault(key, name)
    if not by_case:
        return {}
    return max(by_case.values(), key=len)


def guess_volume_nodes(scene) -> dict[str, object]:
    """Scalar volume nodes of `scene` for each modality, matched by BraTS naming of the node names.

    What the module's four input selectors are filled with: label-map volumes are never inputs, and
    the first node with a matching name wins (see `guess_modalities`).
    """
    by_name: dict[str, object] = {}
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if not node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetName():
            by_name.setdefault(node.GetName(), node)
    return {key: by_name[name] for key, name in guess_modalities(list(by_name)).items()}


def case_from_volume_nodes(nodes: Mapping[str, object], case_id: str | None = None):
    """The library's `BraTSCase` from four scalar volume nodes keyed by modality (t1, t1ce, t2, flair).

    Geometry (size, spacing, origin, direction: the whole IJK-to-RAS, parent transforms applied) is
    checked against the T1ce node as the data layer checks files; RAS is converted to LPS.
    BraTSInputError names the node and the problem (missing modality, empty node, grid mismatch).
    """
    from BraTSMambaLib.data.case import BraTSCase

    unknown = sorted(set(nodes) - set(cv.MODALITIES))
    if unknown:
        raise BraTSInputError(f"unknown modality keys {unknown}; use {list(cv.MODALITIES)}")
    missing = [cv.MODALITY_TITLES[m] for m in cv.MODALITIES if nodes.get(m) is None]
    if missing:
        raise BraTSInputError(f"missing input volume for {', '.join(missing)} (all four of T1, T1ce, T2, FLAIR are needed)")
    images = {m: image_from_volume_node(nodes[m]) for m in cv.MODALITIES}
    ref_key = cv.REFERENCE_MODALITY
    for m in cv.MODALITIES:
        diffs = geometry_differences(images[m], images[ref_key])
        if diffs:
            raise BraTSInputError(
                f"{node_label(nodes[m])} ({cv.MODALITY_TITLES[m]}): grid does not match "
                f"{node_label(nodes[ref_key])} ({cv.MODALITY_TITLES[ref_key]}): {'; '.join(diffs)} "
                "(resample it onto the T1ce volume first)"
            )
    if case_id is None:
        case_id = _case_id_from_names([nodes[m].GetName() for m in cv.MODALITIES])
    return BraTSCase.from_images(images, case_id=case_id)


def _case_id_from_names(names: list[str]) -> str:
    ids = {p[0] for p in (cv.parse_filename(f"{n}.nii.gz") for n in names if n) if p}
    if len(ids) == 1:
        return ids.pop()
    return "case"
