"""Voxel grids between MRML volume nodes (RAS) and SimpleITK images (LPS).

Slicer stores a volume's grid as one IJK-to-RAS matrix; ITK and SimpleITK use origin, spacing and
direction in LPS. The two differ by the sign of the first two physical axes, so converting flips
the x and y rows of the origin and of the direction matrix. Voxel arrays are (k, j, i) = (z, y, x)
on both sides, so voxels are copied without reordering.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from BraTSMambaLib.errors import BraTSInputError

#: RAS <-> LPS: negate x and y (the matrix is its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def vtk_matrix_to_numpy(matrix) -> np.ndarray:
    """4x4 numpy array from a vtkMatrix4x4."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def numpy_to_vtk_matrix(array: np.ndarray):
    """vtkMatrix4x4 from a 4x4 array."""
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r][c]))
    return m


def node_label(node) -> str:
    """How messages name a node: its name, or its ID when unnamed."""
    return f"volume '{node.GetName() or node.GetID()}'"


def ijk_to_world(node) -> np.ndarray:
    """IJK-to-RAS of a volume node in world coordinates (a linear parent transform is applied).

    A non-linear parent transform cannot be expressed on a voxel grid: BraTSInputError asks the
    user to harden it first.
    """
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras = vtk_matrix_to_numpy(m)
    parent = node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise BraTSInputError(f"{node_label(node)}: has a non-linear transform; harden it before segmenting")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        ijk_to_ras = vtk_matrix_to_numpy(to_world) @ ijk_to_ras
    return ijk_to_ras


def split_ijk_to_physical(matrix: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(origin, spacing, direction) of a 4x4 IJK-to-physical matrix; direction row-major 3x3."""
    linear = np.asarray(matrix, dtype=float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise BraTSInputError(f"IJK-to-physical matrix has a zero-length axis: {linear.tolist()}")
    direction = linear / spacing
    return tuple(np.asarray(matrix)[:3, 3]), tuple(spacing), tuple(direction.ravel())


def compose_ijk_to_physical(origin, spacing, direction) -> np.ndarray:
    """4x4 IJK-to-physical matrix from origin, spacing and a row-major 3x3 direction."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(spacing, dtype=float)
    m[:3, 3] = origin
    return m


def image_ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """4x4 IJK-to-LPS matrix of a SimpleITK image."""
    return compose_ijk_to_physical(image.GetOrigin(), image.GetSpacing(), image.GetDirection())


def image_from_volume_node(node) -> sitk.Image:
    """SimpleITK image (LPS) with the node's voxels and world geometry.

    BraTSInputError when the node holds no 3D scalar image.
    """
    import slicer.util

    image_data = node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise BraTSInputError(f"{node_label(node)}: holds no image data")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise BraTSInputError(f"{node_label(node)}: has {image_data.GetNumberOfScalarComponents()} components per voxel, expected a scalar image")
    array = slicer.util.arrayFromVolume(node)
    if array.ndim != 3:
        raise BraTSInputError(f"{node_label(node)}: is not a 3D volume (array shape {array.shape})")
    origin, spacing, direction = split_ijk_to_physical(RAS_TO_LPS @ ijk_to_world(node))
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def volume_node_from_image(scene, image: sitk.Image, name: str, *, labelmap: bool = False):
    """New scalar (or label-map) volume node in `scene` with the image's voxels and geometry (LPS -> RAS)."""
    import slicer.util

    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, name)
    set_volume_node_from_array(node, sitk.GetArrayFromImage(image), RAS_TO_LPS @ image_ijk_to_lps(image))
    return node


def set_volume_node_from_array(node, array: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    """Fill a volume node with a (z, y, x) array on the grid `ijk_to_ras`."""
    import slicer.util

    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(numpy_to_vtk_matrix(ijk_to_ras))
