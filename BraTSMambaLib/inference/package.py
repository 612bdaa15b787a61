"""Model packages: a folder (or a .zip of it) holding `model.json`, the weights and their sha256 sums.

Layout::

    model.json                   # schema below; lists every other file with its sha256 and size
    weights/fold_0.safetensors   # one file per fold; several folds are averaged as an ensemble
    plans.json, dataset.json     # optional: nnU-Net's own plans (preprocessing, patch size, architecture)

Every load verifies every listed file (size first, so a truncated download says so, then sha256) and
loads the weights strictly into the network the package names: a package for another architecture,
a corrupt file or a checksum mismatch raises `ModelPackageError`. See docs/inference.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.errors import ModelPackageError

SCHEMA_VERSION = 1
MODEL_JSON = "model.json"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
DEFAULT_CONFIGURATION = "3d_fullres"

PathLike = str | os.PathLike


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelPackage:
    """A verified model package on disk. Build it with `open_package`."""

    root: Path
    meta: dict[str, Any]
    source: Path = field(default=None)  # what the user named (folder or zip)

    # --- metadata -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.root.name)

    @property
    def network(self) -> dict[str, Any]:
        return self.meta["network"]

    @property
    def network_name(self) -> str:
        return str(self.network["registry_name"])

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.meta.get("input_modalities", C.MODALITIES))

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self.meta.get("output_regions", C.REGIONS))

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.meta["patch_size"])

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        return tuple(int(a) for a in self.meta.get("inference_allowed_mirroring_axes", (0, 1, 2)))

    @property
    def weight_files(self) -> list[Path]:
        return [self.root / w for w in self.meta["weights"]]

    @property
    def nnunet_plans(self) -> Path | None:
        pre = self.meta.get("preprocessing", {})
        return self.root / pre["nnunet_plans"] if pre.get("nnunet_plans") else None

    @property
    def nnunet_dataset(self) -> Path | None:
        pre = self.meta.get("preprocessing", {})
        return self.root / pre["nnunet_dataset"] if pre.get("nnunet_dataset") else None

    @property
    def configuration(self) -> str:
        return str(self.meta.get("preprocessing", {}).get("configuration", DEFAULT_CONFIGURATION))

    def describe(self) -> str:
        folds = len(self.meta["weights"])
        return f"{self.name} ({self.network_name}, {folds} fold{'s' if folds > 1 else ''})"

    # --- verification and loading ---------------------------------------------------------------
    def verify(self) -> None:
        """Check size and sha256 of every file model.json lists; ModelPackageError on the first problem."""
        for rel, entry in self.meta["files"].items():
            path = self.root / rel
            if not path.is_file():
                raise ModelPackageError(f"{self.source}: {rel} is missing from the package")
            size = path.stat().st_size
            if "size" in entry and size != int(entry["size"]):
                what = "truncated" if size < int(entry["size"]) else "larger than recorded"
                raise ModelPackageError(
                    f"{self.source}: {rel} is {what} ({size} bytes, model.json says {entry['size']}); "
                    "download or copy it again")
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise ModelPackageError(
                    f"{self.source}: {rel} checksum mismatch (sha256 {digest[:12]}..., expected "
                    f"{entry['sha256'][:12]}...): the file is corrupt or was changed")

    def load_state_dicts(self) -> list[dict]:
        """The verified weights, one state dict per fold (CPU tensors)."""
        self.verify()
        return [_read_weights(p, self.source) for p in self.weight_files]

    def build_networks(self, device: Any = "cpu") -> list:
        """One network per fold with its weights loaded strictly, in eval mode, deep supervision off."""
        from BraTSMambaLib.inference.networks import build_network, load_strict

        nets = []
        for path, sd in zip(self.weight_files, self.load_state_dicts()):
            net = build_network(self)
            load_strict(net, sd, f"{self.source} ({path.name})", self.network_name)
            nets.append(net.to(device).eval())
        return nets


def _read_weights(path: Path, source: PathLike) -> dict:
    """A state dict from safetensors, or from a torch file read with weights_only=True."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt archives raise many different types
        raise ModelPackageError(f"{source}: {path.name} cannot be read as weights ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for key in ("network_weights", "state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ModelPackageError(f"{source}: {path.name} does not hold a state dict")
    return dict(obj)


# --- opening -----------------------------------------------------------------------------------


def read_model_json(root: Path, source: PathLike) -> dict[str, Any]:
    """Parse and validate model.json; ModelPackageError naming the package and the problem."""
    path = root / MODEL_JSON
    if not path.is_file():
        raise ModelPackageError(f"{source}: not a model package (no {MODEL_JSON})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelPackageError(f"{source}: {MODEL_JSON} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ModelPackageError(f"{source}: {MODEL_JSON} must hold an object")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ModelPackageError(f"{source}: {MODEL_JSON} schema_version {version!r} is not supported "
                                f"(this version reads {SCHEMA_VERSION})")
    problems = [k for k in ("network", "patch_size", "weights", "files") if k not in meta]
    if problems:
        raise ModelPackageError(f"{source}: {MODEL_JSON} lacks {', '.join(problems)}")
    if not isinstance(meta["network"], dict) or "registry_name" not in meta["network"]:
        raise ModelPackageError(f"{source}: {MODEL_JSON} 'network' needs a 'registry_name'")
    if not meta["weights"]:
        raise ModelPackageError(f"{source}: {MODEL_JSON} lists no weights")
    unlisted = [w for w in meta["weights"] if w not in meta["files"]]
    for key in ("nnunet_plans", "nnunet_dataset"):
        rel = meta.get("preprocessing", {}).get(key)
        if rel and rel not in meta["files"]:
            unlisted.append(rel)
    if unlisted:
        raise ModelPackageError(f"{source}: {MODEL_JSON} has no sha256 for {', '.join(unlisted)}")
    if tuple(meta.get("input_modalities", C.MODALITIES)) != C.MODALITIES:
        raise ModelPackageError(f"{source}: input modalities {meta.get('input_modalities')} differ from "
                                f"{list(C.MODALITIES)}; reorder the channels when packaging")
    if tuple(meta.get("output_regions", C.REGIONS)) != C.REGIONS:
        raise ModelPackageError(f"{source}: output regions {meta.get('output_regions')} are not {list(C.REGIONS)}")
    return meta


def open_package(path: PathLike, *, verify: bool = True) -> ModelPackage:
    """Open a package folder or .zip (extracted once into the cache), verifying every file."""
    source = Path(path).expanduser()
    if not source.exists():
        raise ModelPackageError(f"{source}: model package not found")
    root = _extract_zip(source) if source.is_file() else source
    pkg = ModelPackage(root=root, meta=read_model_json(root, source), source=source)
    if verify:
        pkg.verify()
    return pkg


def _extract_zip(source: Path) -> Path:
    """Extract a zipped package into the cache (keyed by the zip's sha256); returns the package root."""
    from BraTSMambaLib.inference.catalogue import cache_dir

    if not zipfile.is_zipfile(source):
        raise ModelPackageError(f"{source}: neither a package folder nor a readable .zip")
    digest = sha256_file(source)
    dest = cache_dir() / "packages" / digest[:24]
    if not (dest / MODEL_JSON).is_file() and not any(dest.glob(f"*/{MODEL_JSON}")):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
        try:
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    target = (tmp / info.filename).resolve()
                    if not str(target).startswith(str(tmp.resolve())):
                        raise ModelPackageError(f"{source}: unsafe path {info.filename!r} in the archive")
                zf.extractall(tmp)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelPackageError(f"{source}: corrupt or truncated .zip ({e})") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.replace(tmp, dest)
        except OSError:  # another process extracted it first
            shutil.rmtree(tmp, ignore_errors=True)
    if (dest / MODEL_JSON).is_file():
        return dest
    inner = sorted(dest.glob(f"*/{MODEL_JSON}"))
    if len(inner) == 1:
        return inner[0].parent
    raise ModelPackageError(f"{source}: the archive holds no {MODEL_JSON} at its top level")


def is_package(path: PathLike) -> bool:
    p = Path(path)
    return (p.is_dir() and (p / MODEL_JSON).is_file()) or (p.is_file() and p.suffix.lower() == ".zip")


# --- writing -----------------------------------------------------------------------------------


def save_package(
    out: PathLike,
    registry_name: str,
    state_dicts: Sequence[Mapping] | Mapping,
    *,
    patch_size: Sequence[int],
    overrides: Mapping[str, Any] | None = None,
    name: str | None = None,
    description: str = "",
    deep_supervision: bool = False,
    from_plans: bool = False,
    plans: Mapping | None = None,
    dataset_json: Mapping | None = None,
    configuration: str = DEFAULT_CONFIGURATION,
    target_spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
    label_convention: str = "2021",
    mirror_axes: Sequence[int] = (0, 1, 2),
    training: Mapping[str, Any] | None = None,
    license: str = "unspecified",
    intended_use: str = "Research use only; not for clinical decisions.",
    extra: Mapping[str, Any] | None = None,
    as_zip: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a package folder (or .zip with `as_zip`) atomically; returns its path.

    `state_dicts` holds one state dict per fold (or a single one). With nnU-Net `plans` and
    `dataset_json` the package preprocesses with them; otherwise `target_spacing_zyx` with nnU-Net's
    crop-to-nonzero and per-modality z-score over the brain mask. Weights are stored as safetensors.
    """
    from safetensors.torch import save_file

    from BraTSMambaLib.data.io import atomic_path

    out = Path(out)
    if out.exists() and not overwrite:
        raise ModelPackageError(f"{out}: already exists (use --overwrite to replace it)")
    if isinstance(state_dicts, Mapping):
        state_dicts = [state_dicts]
    if not state_dicts:
        raise ModelPackageError(f"{out}: no weights given")
    if (plans is None) != (dataset_json is None):
        raise ModelPackageError(f"{out}: nnU-Net plans and dataset.json go together")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        (tmp / "weights").mkdir()
        weights = []
        for i, sd in enumerate(state_dicts):
            rel = f"weights/fold_{i}.safetensors"
            # clone: safetensors refuses tensors that share memory (U-Mamba's decoder holds the encoder)
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}, str(tmp / rel))
            weights.append(rel)
        pre: dict[str, Any] = {"crop_to_nonzero": True, "normalization": "ZScoreNormalization",
                               "use_mask_for_norm": True, "configuration": configuration}
        if plans is not None:
            (tmp / "plans.json").write_text(json.dumps(plans, indent=2), encoding="utf-8")
            (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2), encoding="utf-8")
            pre.update(nnunet_plans="plans.json", nnunet_dataset="dataset.json")
            pre["target_spacing_zyx"] = list(plans["configurations"][configuration].get("spacing", target_spacing_zyx))
        else:
            pre["target_spacing_zyx"] = [float(s) for s in target_spacing_zyx]
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                files[p.relative_to(tmp).as_posix()] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        meta: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "name": name or out.stem,
            "description": description,
            "network": {"registry_name": registry_name, "overrides": dict(overrides or {}),
                        "deep_supervision": bool(deep_supervision), "from_plans": bool(from_plans)},
            "input_modalities": list(C.MODALITIES),
            "output_regions": list(C.REGIONS),
            "output_activation": "sigmoid",
            "label_convention": C.label_convention(label_convention).name,
            "regions_class_order": list(C.NNUNET_REGIONS_CLASS_ORDER),
            "preprocessing": pre,
            "patch_size": [int(p) for p in patch_size],
            "inference_allowed_mirroring_axes": [int(a) for a in mirror_axes],
            "training": dict(training or {}),
            "license": license,
            "intended_use": intended_use,
            "weights": weights,
            "files": files,
            **dict(extra or {}),
        }
        (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        read_model_json(tmp, out)
        if as_zip:
            with atomic_path(out, overwrite=overwrite) as tmp_zip:
                with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
                    for p in sorted(tmp.rglob("*")):
                        if p.is_file():
                            zf.write(p, p.relative_to(tmp).as_posix())
            shutil.rmtree(tmp)
        else:
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
