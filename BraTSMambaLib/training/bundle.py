"""A compact, lossless bundle of an nnU-Net raw dataset, for moving it to a training machine.

Each case is cropped to the bounding box of its nonzero voxels (what nnU-Net's preprocessing crops
to anyway, so the preprocessed data are identical), its four channels and label map are stored with
their original dtypes and geometry, and the bytes are xz-compressed: BraTS cases shrink from about
8 MB of .nii.gz to about 5 MB. `pack` splits the cases into parts of a size limit (for transfers
with a per-call limit); `unpack` writes an nnU-Net raw dataset back from any set of parts.
"""
from __future__ import annotations

import io
import json
import lzma
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.errors import BraTSInputError

SUFFIX = ".case.xz"
N_CHANNELS = len(C.MODALITIES)


def _nonzero_bbox(arrays: Sequence[np.ndarray]) -> tuple[slice, ...]:
    mask = np.zeros(arrays[0].shape, dtype=bool)
    for a in arrays:
        mask |= a != 0
    if not mask.any():
        return tuple(slice(0, s) for s in mask.shape)
    idx = np.nonzero(mask)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def pack_case(raw_dataset: Path, case: str, out: Path) -> int:
    """Write one case's bundle file; returns its size in bytes."""
    import SimpleITK as sitk

    imgs = [sitk.ReadImage(str(raw_dataset / "imagesTr" / f"{case}_{i:04d}.nii.gz")) for i in range(N_CHANNELS)]
    seg = sitk.ReadImage(str(raw_dataset / "labelsTr" / f"{case}.nii.gz"))
    arrays = [sitk.GetArrayFromImage(i) for i in imgs]
    bb = _nonzero_bbox(arrays)  # (z, y, x) slices
    cropped = sitk.RegionOfInterest(imgs[0], [bb[2].stop - bb[2].start, bb[1].stop - bb[1].start,
                                              bb[0].stop - bb[0].start], [bb[2].start, bb[1].start, bb[0].start])
    header = {"case": case, "spacing": cropped.GetSpacing(), "origin": cropped.GetOrigin(),
              "direction": cropped.GetDirection(), "dtypes": [str(a.dtype) for a in arrays],
              "seg_dtype": "uint8", "shape": [s.stop - s.start for s in bb]}
    buf = io.BytesIO()
    np.savez(buf, *[a[bb] for a in arrays], seg=sitk.GetArrayFromImage(seg)[bb].astype(np.uint8))
    payload = json.dumps(header).encode() + b"\n" + lzma.compress(buf.getvalue(), preset=6)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, out)
    return len(payload)


def pack(raw_dataset: str | os.PathLike, out_dir: str | os.PathLike, *, part_mb: float = 45.0,
         jobs: int | None = None) -> list[Path]:
    """Bundle every case of an nnU-Net raw dataset into `out_dir/part_N/` folders of at most `part_mb`."""
    raw = Path(raw_dataset)
    if not (raw / "dataset.json").is_file():
        raise BraTSInputError(f"{raw}: not an nnU-Net raw dataset (no dataset.json)")
    cases = sorted(p.name[:-len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))
    out = Path(out_dir)
    staging = out / "cases"
    staging.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max(1, jobs or os.cpu_count() or 1)) as pool:
        sizes = list(pool.map(pack_case, [raw] * len(cases), cases, [staging / f"{c}{SUFFIX}" for c in cases]))
    parts: list[Path] = []
    used = float("inf")
    for case, size in zip(cases, sizes):
        if used + size > part_mb * 1e6:
            parts.append(out / f"part_{len(parts)}")
            parts[-1].mkdir(exist_ok=True)
            shutil.copyfile(raw / "dataset.json", parts[-1] / "dataset.json")
            used = 0.0
        os.replace(staging / f"{case}{SUFFIX}", parts[-1] / f"{case}{SUFFIX}")
        used += size
    staging.rmdir()
    return parts


def unpack_case(path: Path, raw_dataset: Path) -> str:
    import SimpleITK as sitk

    data = path.read_bytes()
    head, _, body = data.partition(b"\n")
    header = json.loads(head)
    arrays = np.load(io.BytesIO(lzma.decompress(body)))
    case = header["case"]

    def write(arr: np.ndarray, target: Path) -> None:
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(header["spacing"])
        img.SetOrigin(header["origin"])
        img.SetDirection(header["direction"])
        tmp = target.with_name(".tmp_" + target.name)
        sitk.WriteImage(img, str(tmp), True, 1)
        os.replace(tmp, target)

    for i in range(N_CHANNELS):
        write(arrays[f"arr_{i}"], raw_dataset / "imagesTr" / f"{case}_{i:04d}.nii.gz")
    write(arrays["seg"], raw_dataset / "labelsTr" / f"{case}.nii.gz")
    return case


def unpack(parts: Iterable[str | os.PathLike], raw_dataset: str | os.PathLike, *, jobs: int | None = None) -> list[str]:
    """Write an nnU-Net raw dataset (imagesTr, labelsTr, dataset.json) from bundle parts."""
    raw = Path(raw_dataset)
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    files = []
    for part in parts:
        part = Path(part)
        if (part / "dataset.json").is_file():
            shutil.copyfile(part / "dataset.json", raw / "dataset.json")
        files.extend(sorted(part.glob(f"*{SUFFIX}")))
    if not files:
        raise BraTSInputError(f"no {SUFFIX} files in {list(parts)}")
    with ProcessPoolExecutor(max(1, jobs or os.cpu_count() or 1)) as pool:
        cases = list(pool.map(unpack_case, files, [raw] * len(files)))
    dj = json.loads((raw / "dataset.json").read_text())
    dj["numTraining"] = len(cases)
    (raw / "dataset.json").write_text(json.dumps(dj, indent=2))
    return sorted(cases)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("raw_dataset")
    a.add_argument("out_dir")
    a.add_argument("--part-mb", type=float, default=45.0)
    b = sub.add_parser("unpack")
    b.add_argument("raw_dataset")
    b.add_argument("parts", nargs="+")
    args = p.parse_args()
    if args.cmd == "pack":
        for part in pack(args.raw_dataset, args.out_dir, part_mb=args.part_mb):
            print(part, sum(f.stat().st_size for f in part.iterdir()) / 1e6, "MB")
    else:
        print(len(unpack(args.parts, args.raw_dataset)), "cases")
