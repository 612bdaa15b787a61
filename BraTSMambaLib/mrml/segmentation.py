"""Region masks <-> MRML segmentation nodes: three overlapping segments WT, TC, ET.

Each region is imported as its own binary-labelmap layer, so voxels can belong to several
segments (WT contains TC contains ET in BraTS; nothing here assumes the nesting).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from BraTSMambaLib.data import conventions as cv
from BraTSMambaLib.errors import BraTSInputError
from BraTSMambaLib.mrml.geometry import ijk_to_world, node_label, numpy_to_vtk_matrix, set_volume_node_from_array

TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"

_RULES_REGISTERED = False


def register_converter_rules() -> None:
    """Register the labelmap <-> closed-surface conversion rules once per process.

    Slicer does this at start-up; plain Python with slicer-core must do it before segmentations
    can be imported, shown in 3D or saved.
    """
    global _RULES_REGISTERED
    if _RULES_REGISTERED:
        return
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    names = {rule.GetName() for rule in factory.GetConverterRules() or ()}
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule(), slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule()):
        if rule.GetName() not in names:
            factory.RegisterConverterRule(rule)
    _RULES_REGISTERED = True


def terminology_string(region: str) -> str:
    """Slicer's TerminologyEntry tag for a region (category/type from conventions)."""
    from slicerio.segmentation import terminology_entry_to_string

    return terminology_entry_to_string(
        {"contextName": TERMINOLOGY_CONTEXT, "category": list(cv.TERMINOLOGY_CATEGORY), "type": list(cv.TERMINOLOGY_TYPE)}
    )


def grid_shape(node) -> tuple[int, int, int]:
    """(z, y, x) voxel shape of a volume node."""
    image_data = node.GetImageData()
    if image_data is None:
        raise BraTSInputError(f"{node_label(node)}: holds no image data")
    return tuple(reversed(image_data.GetDimensions()))


def region_masks(prediction, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Boolean (z, y, x) masks keyed by region from a prediction.

    Accepts a (3, z, y, x) array in REGIONS order, a mapping region -> array, or an object with a
    `regions` (or `masks`) attribute holding either. Floating-point values are sigmoid
    probabilities and are thresholded at 0.5, as nnU-Net does for region outputs.
    """
    for attr in ("regions", "masks"):
        if not isinstance(prediction, (np.ndarray, Mapping)) and hasattr(prediction, attr):
            prediction = getattr(prediction, attr)
            break
    if isinstance(prediction, Mapping):
        missing = [r for r in cv.REGIONS if r not in prediction]
        if missing:
            raise BraTSInputError(f"prediction lacks regions {missing}")
        arrays = [np.asarray(prediction[r]) for r in cv.REGIONS]
    else:
        stack = np.asarray(prediction)
        if stack.ndim != 4 or stack.shape[0] != len(cv.REGIONS):
            raise BraTSInputError(f"prediction has shape {stack.shape}, expected (3, z, y, x) region masks (WT, TC, ET)")
        arrays = list(stack)
    out = {}
    for region, arr in zip(cv.REGIONS, arrays):
        if arr.shape != tuple(shape):
            raise BraTSInputError(f"prediction {region} mask has shape {arr.shape}, the reference volume is {tuple(shape)} (z, y, x)")
        out[region] = arr > 0.5 if np.issubdtype(arr.dtype, np.floating) else arr.astype(bool)
    return out


def _oriented_image(mask: np.ndarray, ijk_to_ras: np.ndarray):
    import slicer
    import vtk
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    z, y, x = mask.shape
    image.SetDimensions(x, y, z)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
    image.SetImageToWorldMatrix(numpy_to_vtk_matrix(ijk_to_ras))
    return image


def _build_segmentation(masks: Mapping[str, np.ndarray], reference_node, ijk_to_ras: np.ndarray):
    """A segmentation (in a private scratch scene) with one segment per region, each its own layer."""
    import slicer

    register_converter_rules()
    scratch = slicer.vtkMRMLScene()
    node = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    segmentation = node.GetSegmentation()
    tag = slicer.vtkSegment.GetTerminologyEntryTagName()
    for region in cv.REGIONS:
        before = {segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())}
        if not logic.ImportLabelmapToSegmentationNode(_oriented_image(masks[region], ijk_to_ras), node, region):
            raise RuntimeError(f"Slicer could not import the {region} mask into a segmentation")
        added = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
                 if segmentation.GetNthSegmentID(i) not in before]
        if not added:  # an empty mask imports no segment: add it empty so all three always exist
            segment_id = segmentation.AddEmptySegment(region, region, list(cv.REGION_COLORS[region]))
        else:
            segment_id = added[0]
        segment = segmentation.GetSegment(segment_id)
        segment.SetName(region)
        segment.SetColor(*cv.REGION_COLORS[region])
        segment.SetTag(tag, terminology_string(region))
        segment.SetTag("BraTSMamba.Region", region)
        segment.SetTag("BraTSMamba.Title", cv.REGION_TITLES[region])
    return node


def segmentation_from_prediction(scene, prediction, reference_node, name: str = "BraTS tumour", *, target=None, show3d: bool = True):
    """Segmentation node with three overlapping segments WT, TC, ET on `reference_node`'s grid.

    `prediction` holds region masks in the reference volume's voxel order (see `region_masks`).
    The segments are built completely in a scratch scene and then copied into the new node (or
    into `target`, replacing its segments) in one step, so a failure never leaves a half-filled
    segmentation behind. With `show3d` a closed-surface representation is created for 3D views.
    """
    masks = region_masks(prediction, grid_shape(reference_node))
    built = _build_segmentation(masks, reference_node, ijk_to_world(reference_node))
    node = target or scene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode", scene.GenerateUniqueName(name) if scene.GetFirstNodeByName(name) else name)
    was = node.StartModify()
    node.GetSegmentation().DeepCopy(built.GetSegmentation())
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    node.EndModify(was)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    if show3d:
        node.CreateClosedSurfaceRepresentation()
    return node


def segment_id(segmentation_node, region: str) -> str:
    """ID of the segment named `region`; BraTSInputError when absent."""
    sid = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(region)
    if not sid:
        raise BraTSInputError(f"segmentation '{segmentation_node.GetName()}' has no segment named {region}")
    return sid


def segment_masks(segmentation_node, reference_node) -> dict[str, np.ndarray]:
    """Boolean (z, y, x) mask of each region segment, resampled onto `reference_node`'s grid."""
    import slicer
    import vtk

    scene = segmentation_node.GetScene()
    out = {}
    for region in cv.REGIONS:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id(segmentation_node, region))
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"__{region}_export__")
        try:
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, reference_node):
                raise RuntimeError(f"Slicer could not export segment {region}")
            out[region] = slicer.util.arrayFromVolume(labelmap) > 0
        finally:
            scene.RemoveNode(labelmap)
    return out


def segment_volumes_ml(segmentation_node) -> dict[str, float]:
    """Volume of each region segment in millilitres, counted on the segment's own labelmap."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    out = {}
    segmentation = segmentation_node.GetSegmentation()
    for region in cv.REGIONS:
        sid = segment_id(segmentation_node, region)
        image = slicer.vtkOrientedImageData()
        segmentation_node.GetBinaryLabelmapRepresentation(sid, image)
        if image.GetPointData().GetScalars() is None:
            out[region] = 0.0
            continue
        voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        label = segmentation.GetSegment(sid).GetLabelValue()
        m = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(m)
        voxel_mm3 = abs(np.linalg.det(np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])))
        out[region] = float(np.count_nonzero(voxels == label) * voxel_mm3 / 1000.0)
    return out


def volumes_table(scene, segmentation_node, name: str | None = None, *, target=None):
    """Table node with one row per region: segment, title, volume in mL."""
    import vtk

    volumes = segment_volumes_ml(segmentation_node)
    table = target or scene.AddNewNodeByClass("vtkMRMLTableNode", name or f"{segmentation_node.GetName()} volumes")
    was = table.StartModify()
    table.RemoveAllColumns()
    cols = {"Segment": vtk.vtkStringArray(), "Region": vtk.vtkStringArray(), "Volume [mL]": vtk.vtkDoubleArray()}
    for col_name, arr in cols.items():
        arr.SetName(col_name)
    for region in cv.REGIONS:
        cols["Segment"].InsertNextValue(region)
        cols["Region"].InsertNextValue(cv.REGION_TITLES[region])
        cols["Volume [mL]"].InsertNextValue(round(volumes[region], 3))
    for arr in cols.values():
        table.AddColumn(arr)
    table.SetColumnUnitLabel("Volume [mL]", "mL")
    table.EndModify(was)
    return table


def labelmap_from_prediction(scene, prediction, reference_node, name: str = "BraTS labels", *, convention: str = "2021", target=None):
    """BraTS label-map volume node (2021 {0,1,2,4} or 2023 {0,1,2,3}) on `reference_node`'s grid.

    Labels are assembled from the region masks with nnU-Net's region order (conventions.regions_to_labels).
    """
    masks = region_masks(prediction, grid_shape(reference_node))
    labels = cv.regions_to_labels(np.stack([masks[r] for r in cv.REGIONS]), convention)
    node = target or scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    set_volume_node_from_array(node, labels, ijk_to_world(reference_node))
    if node.GetDisplayNode() is None and scene.GetNodeByID("vtkMRMLColorTableNodeLabels") is not None:
        node.CreateDefaultDisplayNodes()  # Slicer's label colours; slicer-core has no colour tables
    return node
