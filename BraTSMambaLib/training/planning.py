"""nnU-Net fingerprinting, planning and 3d_fullres preprocessing, plus plans sized for one model.

`plan_dataset` runs nnU-Net's own steps (`plan_and_preprocess_api`) with process counts that suit
the machine. `derive_plans` writes a second plans file (`nnUNetPlans_<tag>.json`) for a chosen
patch size, number of stages, feature widths or batch size, and stores registry overrides under
the configuration key `network_overrides`; it shares the default plans' preprocessed data (same
spacing and normalisation), so nothing is preprocessed twice. Trainers read that plans file with
`-p nnUNetPlans_<tag>`.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from BraTSMambaLib.errors import BraTSInputError

CONFIGURATION = "3d_fullres"
DEFAULT_PLANS = "nnUNetPlans"
#: Approximate peak memory of one nnU-Net preprocessing worker on a BraTS case (GB).
_GB_PER_PREPROCESS_WORKER = 4.0


def machine_processes(kind: str = "preprocess") -> int:
    """Worker processes for nnU-Net on this machine: all cores for fingerprints, memory-bound for preprocessing."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if kind == "fingerprint":
        return max(1, cpus)
    try:
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    except (ValueError, OSError, AttributeError):
        ram_gb = 8.0
    return max(1, min(cpus, int(ram_gb // _GB_PER_PREPROCESS_WORKER)))


def set_nnunet_paths(raw: str | os.PathLike | None = None, preprocessed: str | os.PathLike | None = None,
                     results: str | os.PathLike | None = None) -> None:
    """Point nnU-Net's environment variables at these folders (before nnU-Net reads them)."""
    for key, value in (("nnUNet_raw", raw), ("nnUNet_preprocessed", preprocessed), ("nnUNet_results", results)):
        if value is not None:
            Path(value).mkdir(parents=True, exist_ok=True)
            os.environ[key] = str(Path(value).resolve())


def _require(key: str) -> Path:
    value = os.environ.get(key)
    if not value:
        raise BraTSInputError(f"{key} is not set: pass --{key.split('_', 1)[1]} or export {key}")
    return Path(value)


def dataset_folder_name(dataset: int | str) -> str:
    """`DatasetNNN_Name` for an id or a name, looked up in nnUNet_raw / nnUNet_preprocessed."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else str(dataset))
    except RuntimeError as e:
        raise BraTSInputError(f"dataset {dataset}: {str(e).splitlines()[0]}") from None


@dataclass
class PlanResult:
    dataset_name: str
    plans_identifier: str
    plans_file: Path
    configuration: Mapping[str, Any]


def plan_dataset(dataset: int | str, *, num_processes: int | None = None, verify: bool = True,
                 preprocess: bool = True, gpu_memory_gb: float | None = None) -> PlanResult:
    """Fingerprint, plan and (optionally) preprocess 3d_fullres with nnU-Net's default planner."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    _require("nnUNet_raw")
    _require("nnUNet_preprocessed")
    name = dataset_folder_name(dataset)
    did = int(name[7:10])
    extract_fingerprints([did], num_processes=num_processes or machine_processes("fingerprint"),
                         check_dataset_integrity=verify, clean=True, verbose=False)
    plans_id = plan_experiments([did], gpu_memory_target_in_gb=gpu_memory_gb)
    if preprocess:
        preprocess_dataset(name, plans_id, num_processes=num_processes)
    return load_plan(name, plans_id)


def preprocess_dataset(dataset: int | str, plans_identifier: str = DEFAULT_PLANS, *,
                       num_processes: int | None = None) -> None:
    """nnU-Net's 3d_fullres preprocessing (DefaultPreprocessor), and the ground truth copied alongside."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    name = dataset_folder_name(dataset)
    pre = _require("nnUNet_preprocessed") / name
    raw = _require("nnUNet_raw") / name
    pm = PlansManager(str(pre / f"{plans_identifier}.json"))
    cm = pm.get_configuration(CONFIGURATION)
    cm.preprocessor_class(verbose=False).run(int(name[7:10]), CONFIGURATION, plans_identifier,
                                             num_processes=num_processes or machine_processes("preprocess"))
    gt = pre / "gt_segmentations"
    gt.mkdir(exist_ok=True)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    for key, entry in get_filenames_of_train_images_and_targets(str(raw), dataset_json).items():
        target = gt / f"{key}{dataset_json['file_ending']}"
        if not target.exists():
            shutil.copyfile(entry["label"], target)


def load_plan(dataset: int | str, plans_identifier: str = DEFAULT_PLANS) -> PlanResult:
    name = dataset_folder_name(dataset)
    path = _require("nnUNet_preprocessed") / name / f"{plans_identifier}.json"
    if not path.is_file():
        raise BraTSInputError(f"{path}: no such plans file (run `brats-mamba plan {dataset}` first)")
    plans = json.loads(path.read_text())
    return PlanResult(name, plans_identifier, path, plans["configurations"][CONFIGURATION])


def derive_plans(dataset: int | str, tag: str, *, base: str = DEFAULT_PLANS,
                 patch_size: Sequence[int] | None = None, n_stages: int | None = None,
                 features_per_stage: Sequence[int] | None = None, batch_size: int | None = None,
                 network_overrides: Mapping[str, Any] | None = None) -> PlanResult:
    """Write `<base>_<tag>.json`: the base plans with 3d_fullres resized for one model.

    A new patch size recomputes nnU-Net's pooling and kernels for it (`get_pool_and_conv_props`);
    `n_stages` caps the stage count (fewer stages: a smaller network with a larger bottleneck).
    """
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    src = load_plan(dataset, base)
    plans = json.loads(src.plans_file.read_text())
    conf = plans["configurations"][CONFIGURATION]
    arch = conf["architecture"]["arch_kwargs"]
    if patch_size is not None or n_stages is not None:
        ps = [int(p) for p in (patch_size or conf["patch_size"])]
        if len(ps) != 3 or min(ps) < 8:
            raise BraTSInputError(f"--patch-size {ps}: give three sides of at least 8 voxels")
        max_pool = 999999 if n_stages is None else max(0, int(n_stages) - 1)
        _, pool, kernels, ps, _ = get_pool_and_conv_props(conf["spacing"], ps, 4, max_pool)
        n = len(pool)
        base_feat = int(conf.get("UNet_base_num_features", arch["features_per_stage"][0]))
        max_feat = int(conf.get("unet_max_num_features", max(arch["features_per_stage"])))
        arch.update(n_stages=n, kernel_sizes=[list(k) for k in kernels], strides=[list(p) for p in pool],
                    features_per_stage=[min(base_feat * 2 ** i, max_feat) for i in range(n)])
        key = "n_blocks_per_stage" if "n_blocks_per_stage" in arch else "n_conv_per_stage"
        old = list(arch[key])
        arch[key] = (old + [old[-1]] * n)[:n]
        arch["n_conv_per_stage_decoder"] = (list(arch["n_conv_per_stage_decoder"]) + [2] * n)[:n - 1]
        conf["patch_size"] = [int(p) for p in ps]
    if features_per_stage is not None:
        feats = [int(f) for f in features_per_stage]
        if len(feats) != arch["n_stages"]:
            raise BraTSInputError(f"--features {feats}: the plan has {arch['n_stages']} stages; give one width each")
        arch["features_per_stage"] = feats
    if batch_size is not None:
        conf["batch_size"] = int(batch_size)
    if network_overrides:
        conf["network_overrides"] = dict(network_overrides)
    plans_id = f"{base}_{tag}"
    plans["plans_name"] = plans_id
    from BraTSMambaLib.data.io import atomic_write_text

    path = src.plans_file.parent / f"{plans_id}.json"
    atomic_write_text(path, json.dumps(plans, indent=2), overwrite=True)
    return PlanResult(src.dataset_name, plans_id, path, conf)
