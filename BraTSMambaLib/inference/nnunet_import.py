"""Turn an nnU-Net v2 results folder into a model package (folds become an ensemble).

The folder is `<Trainer>__<Plans>__<Configuration>/` with plans.json, dataset.json and
`fold_*/checkpoint_final.pth` (weights under 'network_weights'). The trainer name gives the network:
`nnUNetTrainer<RegistryName>[suffix]` (ours, in BraTSMambaLib.training, and U-Mamba's
nnUNetTrainerUMambaBot / nnUNetTrainerUMambaEnc). The package keeps nnU-Net's plans.json and
dataset.json, so preprocessing at inference is exactly the training preprocessing.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.errors import ModelPackageError

CHECKPOINT = "checkpoint_final.pth"
TRAINER_PREFIX = "nnUNetTrainer"
#: Registry networks whose architecture is read from the nnU-Net plans (U-Mamba's design).
PLANS_BASED = frozenset({"umambabot", "umambaenc"})
#: Plans-configuration key where our trainers keep registry overrides (BraTSMambaLib.training.trainers).
OVERRIDES_KEY = "network_overrides"
_CHANNEL_ALIASES = {"t1": {"t1", "t1n", "t1w", "t1-native"}, "t1ce": {"t1ce", "t1c", "t1gd", "t1-gd", "t1+c"},
                    "t2": {"t2", "t2w"}, "flair": {"flair", "t2f", "t2-flair"}}


def parse_results_folder_name(name: str) -> tuple[str, str, str]:
    """(trainer, plans, configuration) from `Trainer__Plans__Configuration`."""
    parts = name.split("__")
    if len(parts) != 3 or not all(parts):
        raise ModelPackageError(f"{name}: an nnU-Net results folder is named <Trainer>__<Plans>__<Configuration>")
    return parts[0], parts[1], parts[2]


def registry_name_for_trainer(trainer: str) -> str:
    """Registry network of an nnU-Net trainer class name (longest registered name it starts with)."""
    from BraTSMambaLib import nets

    if not trainer.startswith(TRAINER_PREFIX):
        raise ModelPackageError(f"trainer {trainer!r} is not an nnU-Net trainer name ({TRAINER_PREFIX}<Network>)")
    rest = trainer[len(TRAINER_PREFIX):].lower()
    matches = [n for n in nets.list_models() if rest.startswith(n.lower())]
    if not matches:
        raise ModelPackageError(
            f"trainer {trainer!r} trains no network of the registry ({', '.join(nets.list_models())}); stock "
            "nnU-Net U-Nets are run with nnU-Net's own predictor")
    return max(matches, key=len)


def load_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint read with weights_only=True (numpy scalars in its log are allowed)."""
    import numpy as np
    import torch

    safe = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]
    try:
        safe.append(np._core.multiarray.scalar)  # numpy >= 2
    except AttributeError:
        safe.append(np.core.multiarray.scalar)
    try:
        with torch.serialization.safe_globals(safe):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelPackageError(f"{path}: cannot be read as an nnU-Net checkpoint with weights_only=True "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise ModelPackageError(f"{path}: no 'network_weights' in the checkpoint")
    return ckpt


def _check_dataset(dataset_json: dict, source: Path) -> None:
    """Channels must be T1, T1ce, T2, FLAIR in order and labels the three BraTS regions, WT/TC/ET order."""
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    names = [str(channels.get(str(i), "")).strip().lower() for i in range(len(channels))]
    if len(names) != len(C.MODALITIES) or any(n not in _CHANNEL_ALIASES[m] for n, m in zip(names, C.MODALITIES)):
        raise ModelPackageError(f"{source}/dataset.json: channels {names} are not T1, T1ce, T2, FLAIR in that order")
    labels = dataset_json.get("labels", {})
    regions = [tuple(sorted(v)) if isinstance(v, (list, tuple)) else (v,) for k, v in labels.items()
               if k != "background"]
    expected = [tuple(C.NNUNET_REGIONS[r]) for r in C.REGIONS]
    if regions != expected or "regions_class_order" not in dataset_json:
        raise ModelPackageError(f"{source}/dataset.json: labels {labels} are not the BraTS region training "
                                f"(WT {expected[0]}, TC {expected[1]}, ET {expected[2]} with regions_class_order)")


def import_nnunet(
    results: str | os.PathLike, out: str | os.PathLike, *, folds: Sequence[str] | None = None,
    checkpoint: str = CHECKPOINT, as_zip: bool | None = None, overwrite: bool = False, name: str | None = None,
    license: str = "unspecified",
) -> Path:
    """Write a package from an nnU-Net results folder; every fold is strictly loaded first (refusing
    weights that do not fit the named network). Returns the package path."""
    from BraTSMambaLib.inference.networks import build_network, load_strict
    from BraTSMambaLib.inference.package import ModelPackage, save_package

    src = Path(results).expanduser()
    if not src.is_dir():
        raise ModelPackageError(f"{src}: not a folder")
    trainer, plans_name, configuration = parse_results_folder_name(src.resolve().name)
    for f in ("plans.json", "dataset.json"):
        if not (src / f).is_file():
            raise ModelPackageError(f"{src}: no {f} (not an nnU-Net v2 results folder)")
    try:
        plans = json.loads((src / "plans.json").read_text(encoding="utf-8"))
        dataset_json = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelPackageError(f"{src}: unreadable plans.json or dataset.json ({e})") from None
    _check_dataset(dataset_json, src)
    conf = plans.get("configurations", {}).get(configuration)
    if conf is None:
        raise ModelPackageError(f"{src}/plans.json: no configuration {configuration!r}")
    fold_dirs = sorted(p for p in src.glob("fold_*") if p.is_dir())
    if folds:
        fold_dirs = [src / (f if str(f).startswith("fold_") else f"fold_{f}") for f in folds]
    ckpts = [d / checkpoint for d in fold_dirs]
    missing = [str(c) for c in ckpts if not c.is_file()]
    if not ckpts or missing:
        raise ModelPackageError(f"{src}: missing {', '.join(missing) or f'fold_*/{checkpoint}'}")
    registry = registry_name_for_trainer(trainer)
    from BraTSMambaLib import nets

    deep_supervision = bool(nets.get_spec(registry).supports_deep_supervision)
    from_plans = registry.lower() in PLANS_BASED
    overrides = dict(conf.get(OVERRIDES_KEY) or {})
    states, epochs, mirror_axes = [], [], None
    for c in ckpts:
        ck = load_checkpoint(c)
        if ck.get("trainer_name") and ck["trainer_name"] != trainer:
            raise ModelPackageError(f"{c}: trained by {ck['trainer_name']}, but the folder names {trainer}")
        states.append(ck["network_weights"])
        epochs.append(ck.get("current_epoch"))
        mirror_axes = ck.get("inference_allowed_mirroring_axes", mirror_axes)
    meta_stub = {
        "name": name or f"{registry}-{src.resolve().parent.name}",
        "network": {"registry_name": registry, "overrides": overrides, "deep_supervision": deep_supervision,
                    "from_plans": from_plans},
        "patch_size": conf["patch_size"],
        "preprocessing": {"configuration": configuration},
    }
    # Check every fold against the network before writing anything.
    stub = ModelPackage(root=src, meta=meta_stub, source=src)
    if from_plans:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        cm = PlansManager(plans).get_configuration(configuration)
        net = nets.build_model(registry, patch_size=conf["patch_size"], deep_supervision=deep_supervision, plans=cm,
                               **overrides)
        if deep_supervision:
            nets.set_deep_supervision(net, False)
    else:
        net = build_network(stub)
    for c, sd in zip(ckpts, states):
        load_strict(net, sd, str(c), registry)
    zip_out = str(out).lower().endswith(".zip") if as_zip is None else as_zip
    return save_package(
        out, registry, states, patch_size=conf["patch_size"], name=meta_stub["name"], overrides=overrides,
        description=f"{registry} trained with nnU-Net ({trainer}, {plans_name}, {configuration}), "
                    f"{len(states)} fold{'s' if len(states) > 1 else ''}",
        deep_supervision=deep_supervision, from_plans=from_plans, plans=plans, dataset_json=dataset_json,
        configuration=configuration, mirror_axes=tuple(mirror_axes) if mirror_axes is not None else (0, 1, 2),
        training={"framework": "nnU-Net v2", "trainer": trainer, "plans": plans_name, "configuration": configuration,
                  "dataset": plans.get("dataset_name"), "folds": [d.name for d in fold_dirs], "epochs": epochs,
                  "source": str(src.resolve())},
        license=license, as_zip=zip_out, overwrite=overwrite,
    )


def cached_import(results: Path) -> Path:
    """Import an nnU-Net results folder once into the cache (keyed by path, sizes and mtimes)."""
    from BraTSMambaLib.inference.catalogue import cache_dir

    src = results.resolve()
    h = hashlib.sha256(str(src).encode())
    for p in sorted([src / "plans.json", src / "dataset.json", *src.glob(f"fold_*/{CHECKPOINT}")]):
        st = p.stat()
        h.update(f"{p.relative_to(src)}:{st.st_size}:{st.st_mtime_ns}".encode())
    dest = cache_dir() / "nnunet-imports" / f"{src.name}-{h.hexdigest()[:16]}"
    if not (dest / "model.json").is_file():
        import_nnunet(src, dest, overwrite=dest.exists())
    return dest

