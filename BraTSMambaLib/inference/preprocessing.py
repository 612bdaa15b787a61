"""Preprocessing identical to training, through nnU-Net's own classes, and its exact inverse.

Forward (nnU-Net `DefaultPreprocessor.run_case_npy`, run on the nonzero bounding box with the same
result as on the whole volume): transpose, crop to the nonzero region, z-score each modality over
the brain mask, resample to the training spacing. Backward (nnU-Net's `resampling_fn_probabilities`
and `LabelManager.revert_cropping_on_probabilities`): resample the region probabilities to the
cropped input grid, put them back into the full volume, transpose back; label maps and masks made
on the cropped grid go back with `uncrop`.
A package trained with nnU-Net carries its plans.json/dataset.json; for other packages equivalent
plans are built in memory from model.json so the same code runs.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.errors import ModelPackageError

if TYPE_CHECKING:
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

    from BraTSMambaLib.inference.package import ModelPackage

#: nnU-Net's ExperimentPlanner defaults for 3d_fullres resampling (nnunetv2 2.8.1).
_RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
}


def region_dataset_json() -> dict[str, Any]:
    """dataset.json for BraTS region training (channels in MODALITIES order, nnU-Net region labels)."""
    labels: dict[str, Any] = {"background": 0}
    labels.update({r: list(C.NNUNET_REGIONS[r]) for r in C.REGIONS})
    return {
        "channel_names": {str(i): C.MODALITY_TITLES[m] for i, m in enumerate(C.MODALITIES)},
        "labels": labels,
        "regions_class_order": list(C.NNUNET_REGIONS_CLASS_ORDER),
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }


def equivalent_plans(
    target_spacing_zyx: Sequence[float],
    patch_size: Sequence[int],
    *,
    configuration: str = "3d_fullres",
    network_class_name: str = "BraTSMambaLib.nets.build_model",
    use_mask_for_norm: bool = True,
    normalization: str = "ZScoreNormalization",
) -> dict[str, Any]:
    """An nnU-Net plans dict for a package without plans: same preprocessing as nnU-Net's planner
    chooses for BraTS (crop to nonzero, z-score over the brain mask, third-order resampling)."""
    spacing = [float(s) for s in target_spacing_zyx]
    return {
        "dataset_name": "BraTSMamba",
        "plans_name": "BraTSMambaEquivalentPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": [155, 240, 240],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            configuration: {
                "data_identifier": f"BraTSMamba_{configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [int(p) for p in patch_size],
                "median_image_size_in_voxels": [155, 240, 240],
                "spacing": spacing,
                "normalization_schemes": [normalization] * len(C.MODALITIES),
                "use_mask_for_norm": [bool(use_mask_for_norm)] * len(C.MODALITIES),
                **_RESAMPLING,
                "architecture": {"network_class_name": network_class_name, "arch_kwargs": {},
                                 "_kw_requires_import": []},
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(i): {"mean": 0.0, "std": 1.0, "median": 0.0, "min": 0.0, "max": 1.0,
                     "percentile_00_5": 0.0, "percentile_99_5": 1.0} for i in range(len(C.MODALITIES))
        },
    }


def plans_for(pkg: "ModelPackage") -> tuple["PlansManager", "ConfigurationManager", dict]:
    """(PlansManager, ConfigurationManager, dataset_json) of a package: its own nnU-Net files, or equivalents."""
    return _plans_cached(str(pkg.root), json.dumps(pkg.meta, sort_keys=True))


@lru_cache(maxsize=8)
def _plans_cached(root: str, meta_json: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from pathlib import Path

    meta = json.loads(meta_json)
    pre = meta.get("preprocessing", {})
    configuration = pre.get("configuration", "3d_fullres")
    if pre.get("nnunet_plans"):
        plans = json.loads((Path(root) / pre["nnunet_plans"]).read_text(encoding="utf-8"))
        dataset_json = json.loads((Path(root) / pre["nnunet_dataset"]).read_text(encoding="utf-8"))
    else:
        plans = equivalent_plans(pre.get("target_spacing_zyx", (1.0, 1.0, 1.0)), meta["patch_size"],
                                 configuration=configuration, use_mask_for_norm=pre.get("use_mask_for_norm", True),
                                 normalization=pre.get("normalization", "ZScoreNormalization"))
        dataset_json = region_dataset_json()
    pm = PlansManager(plans)
    if configuration not in pm.available_configurations:
        raise ModelPackageError(f"{root}: plans have no configuration {configuration!r} "
                                f"(available: {pm.available_configurations})")
    cm = pm.get_configuration(configuration)
    lm = pm.get_label_manager(dataset_json)
    if not lm.has_regions or len(lm.foreground_regions) != len(C.REGIONS):
        raise ModelPackageError(f"{root}: dataset.json does not define the three BraTS regions "
                                "(region training with regions_class_order)")
    return pm, cm, dataset_json


def preprocess(
    data: np.ndarray | Sequence[np.ndarray], spacing_zyx: Sequence[float], pm: "PlansManager",
    cm: "ConfigurationManager", dataset_json: dict,
) -> tuple[np.ndarray, dict]:
    """nnU-Net preprocessing of a (4, z, y, x) stack (or its four (z, y, x) channels, any dtype, cast to
    float32 as `BraTSCase.array` does); returns (data, properties for `restore`).

    nnU-Net's `DefaultPreprocessor.run_case_npy` runs on the nonzero bounding box (`nonzero_box`),
    not on the whole volume: its hole filling, crop, normalisation and resampling then give the same
    array bit for bit in a fraction of the time, and the properties are composed back to the whole
    volume's (`bbox_used_for_cropping`, `shape_before_cropping`).
    """
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    channels = list(data)
    full_shape = tuple(channels[0].shape)
    box = nonzero_box(channels, margin=0 if zscore_over_mask(cm) else 1)
    if box is None:  # nothing nonzero: nnU-Net keeps the whole volume
        box = tuple(slice(0, n) for n in full_shape)
    channels = [np.asarray(c)[box] for c in channels]
    if len({c.dtype for c in channels}) == 1:
        sub = np.stack(channels)  # run_case_npy casts it to float32 as BraTSCase.array would
    else:  # cast each channel itself: a common dtype could round before the float32 cast
        sub = np.empty((len(channels), *channels[0].shape), dtype=np.float32)
        for i, c in enumerate(channels):
            sub[i] = c
    props: dict[str, Any] = {"spacing": [float(s) for s in spacing_zyx]}
    out, _seg, props = DefaultPreprocessor(verbose=False).run_case_npy(sub, None, props, pm, cm, dataset_json)
    offset = [box[i].start for i in pm.transpose_forward]
    props["shape_before_cropping"] = tuple(full_shape[i] for i in pm.transpose_forward)
    props["bbox_used_for_cropping"] = [[lo + o, hi + o] for (lo, hi), o in zip(props["bbox_used_for_cropping"], offset)]
    return np.ascontiguousarray(out, dtype=np.float32), props


def zscore_over_mask(cm: "ConfigurationManager") -> bool:
    """True when every channel is z-scored over the brain mask. nnU-Net then gathers `image[mask]` before
    its mean and std, so the crop's memory layout cannot change a bit (else `preprocess` crops with a
    margin)."""
    return all(s == "ZScoreNormalization" and bool(m)
               for s, m in zip(cm.normalization_schemes, cm.use_mask_for_norm))


def nonzero_box(channels: Sequence[np.ndarray], margin: int = 1) -> tuple[slice, ...] | None:
    """Bounding box of the voxels nonzero in any channel (after a float32 cast), grown by `margin`
    voxels on each side and clipped to the volume; None when every voxel is zero.

    Why nnU-Net's preprocessing inside any box holding the nonzero bounding box equals its
    preprocessing of the whole volume: every voxel outside the bounding box is background joined to
    the volume's border (through the slab beyond the bounding box that holds it), so
    `binary_fill_holes` fills nothing there and the filled mask has the same bounding box. Inside,
    a background voxel joined to the volume border is joined to the box border (a path out must
    cross it) and the converse holds too: a background voxel on a box face is on the volume border
    or next to a voxel outside the box, which is outside the bounding box, so the filled masks agree.
    With a one-voxel margin the crop of the box is a strided view exactly when the crop of the whole
    volume is (it spans a whole axis in one exactly when it does in the other), so nnU-Net's
    whole-image mean and std (normalisation without a mask) also meet the same memory layout.
    """
    nonzero = None
    for c in channels:
        c = np.asarray(c)
        if c.dtype.kind not in "biu" and c.dtype not in (np.float16, np.float32):
            c = c.astype(np.float32)  # e.g. float64 values too small for float32 become 0 there
        nz = c != 0
        nonzero = nz if nonzero is None else np.logical_or(nonzero, nz, out=nonzero)
    if nonzero is None:
        return None
    z_any = nonzero.any(axis=(1, 2))
    if not z_any.any():
        return None
    yx_any = nonzero.any(axis=0)
    box = []
    for hit_mask, n in zip((z_any, yx_any.any(axis=1), yx_any.any(axis=0)), nonzero.shape):
        hit = np.flatnonzero(hit_mask)
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, n)))
    return tuple(box)


def training_spacing(cm: "ConfigurationManager", spacing_t: Sequence[float]) -> list[float]:
    """The spacing preprocessing resamples to, for a case of (transposed) spacing `spacing_t`: the
    configuration's, with the case's own first spacing in front for 2-D configurations (nnU-Net's rule)."""
    target = list(cm.spacing)
    return target if len(target) == len(spacing_t) else [spacing_t[0], *target]


def to_cropped_input_grid(
    probabilities: "torch.Tensor | np.ndarray", props: dict, pm: "PlansManager", cm: "ConfigurationManager",
) -> "torch.Tensor | np.ndarray":
    """Region probabilities on the preprocessed grid -> the cropped input grid (nnU-Net's
    `resampling_fn_probabilities`). Returned untouched (same device) when preprocessing did not
    resample; otherwise resampled on the CPU as a float32 numpy array."""
    import torch

    shape = props["shape_after_cropping_and_before_resampling"]
    if tuple(probabilities.shape[1:]) == tuple(shape):
        return probabilities
    spacing_t = [props["spacing"][i] for i in pm.transpose_forward]
    current = training_spacing(cm, spacing_t)
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.float().cpu()
    return np.asarray(cm.resampling_fn_probabilities(probabilities, shape, current, spacing_t), dtype=np.float32)


def restore(
    probabilities: "torch.Tensor | np.ndarray", props: dict, pm: "PlansManager", cm: "ConfigurationManager",
    dataset_json: dict,
) -> np.ndarray:
    """Region probabilities on the preprocessed grid -> (3, z, y, x) float32 on the input grid."""
    import torch

    probabilities = to_cropped_input_grid(probabilities, props, pm, cm)
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.float().cpu().numpy()
    lm = pm.get_label_manager(dataset_json)
    full = lm.revert_cropping_on_probabilities(np.asarray(probabilities, dtype=np.float32),
                                               props["bbox_used_for_cropping"], props["shape_before_cropping"])
    return np.ascontiguousarray(full.transpose([0] + [i + 1 for i in pm.transpose_backward]))


def uncrop(array: np.ndarray, props: dict, pm: "PlansManager") -> np.ndarray:
    """A (..., z', y', x') array on the cropped input grid -> (..., z, y, x) on the input grid, zero
    (False) outside the crop: the inverse of nnU-Net's crop and transposition, for label maps and masks."""
    bbox = props["bbox_used_for_cropping"]
    lead = array.shape[:array.ndim - len(bbox)]
    full = np.zeros((*lead, *props["shape_before_cropping"]), dtype=array.dtype)
    full[(Ellipsis, *(slice(lo, hi) for lo, hi in bbox))] = array
    back = [*range(len(lead)), *(i + len(lead) for i in pm.transpose_backward)]
    return full if back == sorted(back) else np.ascontiguousarray(full.transpose(back))
