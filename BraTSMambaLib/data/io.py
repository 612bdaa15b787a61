"""Image reading and atomic writing (NIfTI, NRRD, MHA through SimpleITK).

Every write in the project goes through `atomic_path`: the data land in a temporary file in the
target folder (same extension, so SimpleITK picks the same writer) and are renamed onto the target
only when complete, so an interrupted or failed write never leaves a partial output behind.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from BraTSMambaLib.data.conventions import IMAGE_EXTENSIONS
from BraTSMambaLib.errors import BraTSInputError

PathLike = str | os.PathLike

#: Extensions made of two suffixes; everything else uses the last suffix only.
_COMPOUND_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".seg.nrrd", ".tar.gz")

#: Single-file formats `write_image` writes (a detached header would point at a temporary data file).
WRITE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")

_FLOAT_TYPES = {sitk.sitkFloat32, sitk.sitkFloat64}


def extension(path: PathLike) -> str:
    """File extension including compound ones (`.nii.gz`, `.seg.nrrd`), lower case."""
    name = Path(path).name.lower()
    for ext in _COMPOUND_EXTENSIONS:
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    return Path(name).suffix


def strip_extension(path: PathLike) -> str:
    """File name without its (compound) extension."""
    name = Path(path).name
    ext = extension(name)
    return name[: len(name) - len(ext)] if ext else name


def is_image_file(path: PathLike) -> bool:
    """True when the name ends with an image extension SimpleITK reads (not a test of the content)."""
    return Path(path).name.lower().endswith(IMAGE_EXTENSIONS)


# --- reading ----------------------------------------------------------------------------------


def read_header(path: PathLike) -> sitk.ImageFileReader:
    """Read only the header of an image file (size, spacing, origin, direction, pixel type).

    Cheap even for compressed volumes, so geometry can be validated before any voxel is decoded.
    """
    p = Path(path)
    if not p.exists():
        raise BraTSInputError(f"{p}: file not found")
    if not p.is_file():
        raise BraTSInputError(f"{p}: not a file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise BraTSInputError(f"{p}: cannot be read as an image ({_sitk_reason(e)})") from None
    return reader


def header_problems(reader: sitk.ImageFileReader) -> list[str]:
    """What makes a header unusable as a BraTS modality (not 3D, vector pixels), without the file name."""
    problems = []
    size = reader.GetSize()
    dim = reader.GetDimension()
    if dim == 4 and size[3] == 1:
        dim = 3
    if dim != 3:
        problems.append(f"is {dim}D (size {tuple(size)}), expected a 3D volume")
    comps = reader.GetNumberOfComponents()
    if comps != 1:
        problems.append(f"has {comps} components per voxel, expected a scalar image")
    return problems


def read_image(path: PathLike, *, check_finite: bool = True) -> sitk.Image:
    """Read a scalar 3D image; BraTSInputError naming the file when it is missing, unreadable,
    not 3D, multi-component, or (with `check_finite`) holds NaN or infinite voxels.

    A 4D file with a single time point is read as its 3D volume.
    """
    p = Path(path)
    reader = read_header(p)
    problems = header_problems(reader)
    if problems:
        raise BraTSInputError(f"{p}: " + "; ".join(problems))
    if extension(p) in (".nii", ".nii.gz"):
        check_nifti_complete(p)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise BraTSInputError(f"{p}: cannot be read as an image ({_sitk_reason(e)})") from None
    if image.GetDimension() == 4:
        image = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
    if check_finite:
        bad = count_nonfinite_file(p, image)
        if bad:
            raise BraTSInputError(f"{p}: {bad} voxels are NaN or infinite")
    return image


def check_nifti_complete(path: PathLike) -> None:
    """Refuse a NIfTI file that holds fewer voxel bytes than its header promises.

    SimpleITK reads a truncated `.nii` or `.nii.gz` without complaint and fills the missing part
    with zeros, which would look like a valid scan. For `.nii.gz` the gzip trailer (uncompressed
    size mod 2**32) is checked first; only when it disagrees is the stream decompressed to decide.
    """
    import nibabel

    p = Path(path)
    try:
        header = nibabel.load(str(p)).header
        expected = int(header["vox_offset"]) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for bad files
        raise BraTSInputError(f"{p}: cannot be read as NIfTI ({e})") from None
    if extension(p) == ".nii":
        size = p.stat().st_size
    else:
        with open(p, "rb") as f:
            f.seek(-4, os.SEEK_END)
            if struct.unpack("<I", f.read(4))[0] == expected % 2**32:
                return
        size = _gunzipped_size(p)
    if size < expected:
        raise BraTSInputError(f"{p}: truncated: {size} bytes of image data where the header needs {expected}")


def _gunzipped_size(path: Path) -> int:
    """Decompressed size of a (possibly multi-member) gzip file; BraTSInputError if cut or corrupt."""
    total, member, open_member = 0, zlib.decompressobj(wbits=31), False
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                while chunk:
                    total += len(member.decompress(chunk))
                    open_member = not member.eof
                    chunk = member.unused_data if member.eof else b""
                    if member.eof:
                        member = zlib.decompressobj(wbits=31)
    except zlib.error as e:
        raise BraTSInputError(f"{path}: corrupt gzip data ({e})") from None
    if open_member:
        raise BraTSInputError(f"{path}: truncated: the compressed data ends early")
    return total


def count_nonfinite(image: sitk.Image) -> int:
    """Number of NaN or infinite voxels (always 0 for integer images)."""
    if image.GetPixelID() not in _FLOAT_TYPES:
        return 0
    return int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(image))))


def count_nonfinite_file(path: PathLike, image: sitk.Image) -> int:
    """NaN/inf voxels of an image read from `path`, counted in the file itself.

    SimpleITK's NIfTI reader turns NaN and inf into 0, so for float NIfTI files the stored values
    are counted with nibabel; other formats keep them and are counted on `image`.
    """
    if extension(path) in (".nii", ".nii.gz"):
        import nibabel

        try:
            nii = nibabel.load(str(path))
            if nii.header.get_data_dtype().kind != "f":
                return 0
            return int(np.count_nonzero(~np.isfinite(np.asanyarray(nii.dataobj))))
        except Exception as e:  # noqa: BLE001 - nibabel raises many types for bad files
            raise BraTSInputError(f"{path}: cannot be read as NIfTI ({e})") from None
    return count_nonfinite(image)


def _sitk_reason(e: Exception) -> str:
    """The useful last line of a SimpleITK/ITK exception text."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.lower().startswith("itk::error") or "description:" in ln.lower():
            return ln.split(":", 1)[-1].strip() or ln
    return lines[-1] if lines else type(e).__name__


# --- geometry ---------------------------------------------------------------------------------


def orientation_code(direction: tuple[float, ...]) -> str:
    """Three-letter DICOM/ITK orientation code (e.g. 'LPS', 'RAS') of a 3D direction matrix."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(float(d) for d in direction[:9]))


def _fmt(values) -> str:
    return "(" + ", ".join(str(round(float(v), 4) + 0.0) for v in values) + ")"


def geometry_differences(
    image: sitk.Image | sitk.ImageFileReader,
    reference: sitk.Image | sitk.ImageFileReader,
    *,
    atol: float = 1e-3,
    name: str = "",
    ref_name: str = "",
) -> list[str]:
    """Ways `image`'s grid differs from `reference`'s: size, spacing, origin, direction.

    Spacing and origin are compared in mm, direction cosines unitless, all with `atol`. With
    `name="flair", ref_name="t1ce"` an entry reads "flair spacing (1.0, 1.0, 3.0) differs from
    t1ce (1.0, 1.0, 1.0)".
    """
    out = []
    pre, ref = (f"{name} " if name else ""), (f"{ref_name} " if ref_name else "")
    if tuple(image.GetSize()[:3]) != tuple(reference.GetSize()[:3]):
        out.append(f"{pre}size {tuple(image.GetSize()[:3])} differs from {ref}{tuple(reference.GetSize()[:3])}")
    for what, a, b in (
        ("spacing", image.GetSpacing()[:3], reference.GetSpacing()[:3]),
        ("origin", image.GetOrigin()[:3], reference.GetOrigin()[:3]),
        ("direction", _direction3(image), _direction3(reference)),
    ):
        if not np.allclose(a, b, rtol=0.0, atol=atol):
            out.append(f"{pre}{what} {_fmt(a)} differs from {ref}{_fmt(b)}")
    return out


def _direction3(obj: sitk.Image | sitk.ImageFileReader) -> tuple[float, ...]:
    d = obj.GetDirection()
    if len(d) == 16:
        return tuple(d[r * 4 + c] for r in range(3) for c in range(3))
    return tuple(d)


# --- atomic writing ---------------------------------------------------------------------------


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise BraTSInputError(f"{path}: already exists (use --overwrite to replace it)")
    if path.is_dir():
        raise BraTSInputError(f"{path}: is a folder, expected a file path")


@contextlib.contextmanager
def atomic_path(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same extension); rename it onto `path` on success.

    On any exception the temporary file is removed and nothing is left at `path`. An existing
    `path` is refused unless `overwrite`. The parent folder is created when missing.
    """
    target = Path(path)
    _check_target(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BraTSInputError(f"{target}: cannot create its folder ({e.strerror})") from None
    ext = extension(target)
    tmp = target.with_name(f".{strip_extension(target)}.{secrets.token_hex(4)}.tmp{ext}")
    try:
        yield tmp
        if not tmp.exists():
            raise BraTSInputError(f"{target}: nothing was written")
        _check_target(target, overwrite)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: PathLike, text: str, *, overwrite: bool = False, encoding: str = "utf-8") -> Path:
    """Write a text file (JSON, CSV, report) atomically; returns the path."""
    target = Path(path)
    with atomic_path(target, overwrite=overwrite) as tmp:
        try:
            tmp.write_text(text, encoding=encoding)
        except OSError as e:
            raise BraTSInputError(f"{target}: cannot write ({e.strerror})") from None
    return target


def write_image(image: sitk.Image, path: PathLike, *, overwrite: bool = False, compress: bool = True) -> Path:
    """Write an image atomically in the format the extension names (.nii.gz, .nrrd, .mha...).

    Geometry and pixel type are written as they are. Returns the path.
    """
    target = Path(path)
    if not is_image_file(target):
        raise BraTSInputError(f"{target}: unknown image extension; use one of {', '.join(WRITE_EXTENSIONS)}")
    if extension(target) not in WRITE_EXTENSIONS:
        raise BraTSInputError(f"{target}: detached-header files cannot be written atomically; "
                              f"use one of {', '.join(WRITE_EXTENSIONS)}")
    with atomic_path(target, overwrite=overwrite) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as e:
            raise BraTSInputError(f"{target}: cannot write ({_sitk_reason(e)})") from None
    return target


def label_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 label image from a (z, y, x) integer array with `reference`'s exact geometry."""
    arr = np.asarray(array)
    expected = tuple(reversed(reference.GetSize()))
    if arr.shape != expected:
        raise BraTSInputError(f"label array shape {arr.shape} (z, y, x) does not match the reference {expected}")
    if arr.dtype != np.uint8:
        if arr.size and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or arr.min() < 0 or arr.max() > 255):
            raise BraTSInputError("label array holds values that are not integers in 0..255")
        arr = arr.astype(np.uint8)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(reference)
    return img


def write_label_map(
    array: np.ndarray, reference: sitk.Image, path: PathLike, *, overwrite: bool = False, compress: bool = True
) -> Path:
    """Write a (z, y, x) label array as uint8 with the size, spacing, origin and direction of `reference`."""
    return write_image(label_image(array, reference), path, overwrite=overwrite, compress=compress)
