"""BraTS 2018-2021 or 2023 case folders -> an nnU-Net v2 raw dataset for region training.

Layout (as nnU-Net's Dataset137_BraTS21)::

    DatasetNNN_<name>/imagesTr/<case>_0000.nii.gz .. _0003   T1, T1ce, T2, FLAIR (conventions.MODALITIES)
    DatasetNNN_<name>/labelsTr/<case>.nii.gz                 labels in nnU-Net's internal convention
    DatasetNNN_<name>/dataset.json                           regions WT (1,2,3), TC (2,3), ET (3,), order (1,2,3)
    DatasetNNN_<name>/conversion.json                        source, converted and rejected cases with reasons

Every case is loaded and validated by the data layer (`load_case`, segmentation required); a case
that fails is listed with the reason and left out. The dataset folder is built next to its target
and renamed into place when complete, so an interrupted conversion leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.errors import BraTSInputError

PathLike = str | os.PathLike


@dataclass
class ConversionResult:
    """What `convert_dataset` wrote and what it refused."""

    dataset_dir: Path
    dataset_name: str
    converted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # case folder -> reason

    def as_dict(self) -> dict[str, Any]:
        return {"dataset_dir": str(self.dataset_dir), "dataset_name": self.dataset_name,
                "converted": self.converted, "rejected": self.rejected}


def dataset_name(dataset_id: int, name: str = "BraTS") -> str:
    """nnU-Net's `DatasetNNN_<name>` folder name; BraTSInputError for an id outside 1..999."""
    if not 1 <= int(dataset_id) <= 999:
        raise BraTSInputError(f"--id {dataset_id}: nnU-Net dataset ids are 1..999")
    if not name or any(c in name for c in " /\\"):
        raise BraTSInputError(f"--name {name!r}: use letters, digits, '-' or '_'")
    return f"Dataset{int(dataset_id):03d}_{name}"


def region_dataset_json(num_training: int) -> dict[str, Any]:
    """dataset.json for BraTS region training (the inference side reads the same structure)."""
    from BraTSMambaLib.inference.preprocessing import region_dataset_json as base

    dj = base()
    dj["numTraining"] = int(num_training)
    return dj


def _convert_case(folder: str, images_dir: str, labels_dir: str) -> tuple[str, str | None, str | None]:
    """Validate one case and write it; (folder, case_id or None, reason or None). Runs in a worker."""
    from BraTSMambaLib.data import io
    from BraTSMambaLib.data.case import load_case

    try:
        case = load_case(folder, require_seg=True)
        labels = case.seg_array("nnunet")
        nn_naming = C.NAMINGS["nnunet"]
        for key in C.MODALITIES:
            target = Path(images_dir) / nn_naming.filename(case.case_id, key)
            src = case.paths.get(key)
            if src is not None and io.extension(src) == ".nii.gz":
                shutil.copyfile(src, target)  # already NIfTI: keep the bytes, no re-encoding
            else:
                io.write_image(case.images[key], target)
        io.write_image(io.label_image(labels, case.reference), Path(labels_dir) / f"{case.case_id}.nii.gz")
        return folder, case.case_id, None
    except BraTSInputError as e:
        return folder, None, str(e)
    except (RuntimeError, OSError) as e:
        return folder, None, f"{type(e).__name__}: {e}"


def convert_dataset(src: PathLike | Sequence[PathLike], out_raw: PathLike, dataset_id: int, name: str = "BraTS",
                    *, overwrite: bool = False, jobs: int | None = None, progress: bool = True) -> ConversionResult:
    """Convert every case under `src` (a folder of case folders, or a list of case folders)."""
    from tqdm import tqdm

    from BraTSMambaLib.data.case import find_cases

    folders: list[Path] = []
    for s in ([src] if isinstance(src, (str, os.PathLike)) else src):
        folders.extend(find_cases(s))
    if not folders:
        raise BraTSInputError(f"{src}: no BraTS case folders found (expected files like <case>_t1.nii.gz or "
                              "<case>-t1n.nii.gz)")
    dname = dataset_name(dataset_id, name)
    out_raw = Path(out_raw)
    target = out_raw / dname
    clash = [p.name for p in out_raw.glob(f"Dataset{int(dataset_id):03d}_*")] if out_raw.is_dir() else []
    if clash and not overwrite:
        raise BraTSInputError(f"{out_raw}: dataset id {dataset_id} is taken by {', '.join(clash)} "
                              "(use --overwrite to replace it)")
    out_raw.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dname}.", dir=out_raw))
    try:
        images, labels = tmp / "imagesTr", tmp / "labelsTr"
        images.mkdir()
        labels.mkdir()
        result = ConversionResult(target, dname)
        # two folders naming the same case would write the same files: keep the first, reject the rest
        from BraTSMambaLib.data.case import scan_folder

        first: dict[str, Path] = {}
        unique = []
        for f in folders:
            cid = scan_folder(f).case_id
            if cid is not None and cid in first:
                result.rejected[str(f)] = f"case id {cid} also comes from {first[cid]}"
            else:
                first.setdefault(cid, f)
                unique.append(f)
        jobs = max(1, min(jobs or (os.cpu_count() or 1), len(unique)))
        args = [(str(f), str(images), str(labels)) for f in unique]
        bar = tqdm(total=len(args), desc="convert", unit="case", disable=not progress)
        if jobs == 1:
            outcomes = (_convert_case(*a) for a in args)
            pool = None
        else:
            pool = ProcessPoolExecutor(jobs)
            outcomes = pool.map(_convert_case, *zip(*args))
        try:
            for folder, case_id, reason in outcomes:
                bar.update()
                if reason is not None:
                    result.rejected[folder] = reason
                else:
                    result.converted.append(case_id)
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown()
        if not result.converted:
            raise BraTSInputError(f"{src}: no case could be converted; first problem: "
                                  f"{next(iter(result.rejected.values()))}")
        result.converted.sort()
        (tmp / "dataset.json").write_text(json.dumps(region_dataset_json(len(result.converted)), indent=2))
        (tmp / "conversion.json").write_text(json.dumps(
            {"source": [str(s) for s in ([src] if isinstance(src, (str, os.PathLike)) else src)],
             "converted": result.converted, "rejected": result.rejected}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        for p in clash:
            if (out_raw / p).exists():
                shutil.rmtree(out_raw / p)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def write_split(preprocessed_dataset_dir: PathLike, train: Sequence[str], val: Sequence[str]) -> Path:
    """Write nnU-Net's `splits_final.json` with one fixed fold (fold 0 = `train` / `val`)."""
    from BraTSMambaLib.data.io import atomic_write_text

    overlap = sorted(set(train) & set(val))
    if overlap:
        raise BraTSInputError(f"split: cases in both training and validation: {', '.join(overlap)}")
    path = Path(preprocessed_dataset_dir) / "splits_final.json"
    return atomic_write_text(path, json.dumps([{"train": sorted(train), "val": sorted(val)}], indent=2),
                             overwrite=True)


def export_brats_cases(raw_dataset: PathLike, out: PathLike, cases: Sequence[str]) -> list[Path]:
    """Write cases of an nnU-Net raw dataset back as BraTS 2021-named folders (labels 1, 2, 4), e.g.
    held-out validation cases for `brats-mamba compare --test-cases`; returns the case folders."""
    import SimpleITK as sitk

    from BraTSMambaLib.data.io import write_image

    raw, out = Path(raw_dataset), Path(out)
    naming, nn = C.NAMINGS["brats2021"], C.NAMINGS["nnunet"]
    written = []
    for case in cases:
        src = {m: raw / "imagesTr" / nn.filename(case, m) for m in C.MODALITIES}
        src["seg"] = raw / "labelsTr" / f"{case}.nii.gz"
        missing = [str(p) for p in src.values() if not p.is_file()]
        if missing:
            raise BraTSInputError(f"{raw}: case {case} lacks {', '.join(missing)}")
        folder = out / case
        folder.mkdir(parents=True, exist_ok=True)
        for m in C.MODALITIES:
            shutil.copyfile(src[m], folder / naming.filename(case, m))
        seg = sitk.ReadImage(str(src["seg"]))
        arr = C.convert_labels(sitk.GetArrayFromImage(seg), "nnunet", "2021")
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(seg)
        write_image(img, folder / naming.filename(case, "seg"), overwrite=True)
        written.append(folder)
    return written


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="nnU-Net raw dataset cases -> BraTS 2021-named case folders")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write CASES of RAW_DATASET as BraTS folders under OUT")
    e.add_argument("raw_dataset")
    e.add_argument("out")
    e.add_argument("cases", nargs="+")
    args = p.parse_args()
    for folder in export_brats_cases(args.raw_dataset, args.out, args.cases):
        print(folder)
