"""The model catalogue (Resources/models.json), verified resumable downloads into the per-user cache, and
`resolve_model`: what `--model` names (catalogue name, package folder/zip, nnU-Net results folder).

Downloads go to `<cache>/downloads/<sha256>.zip`: data land in a `.part` file that a later attempt
continues with an HTTP Range request; the file is renamed into place only when its size and sha256
match the catalogue. The cache is `BraTSMambaLib.cache.cache_dir()`.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from BraTSMambaLib.cache import cache_dir
from BraTSMambaLib.errors import ModelPackageError

CATALOGUE_FILE = "models.json"
DEMO_MODEL = "demo"


def resources_dir() -> Path:
    """The Resources folder: $BRATSMAMBA_RESOURCES, else next to the BraTSMambaLib package."""
    env = os.environ.get("BRATSMAMBA_RESOURCES")
    if env:
        return Path(env).expanduser()
    import BraTSMambaLib

    return Path(BraTSMambaLib.__file__).resolve().parents[1] / "Resources"


@dataclass(frozen=True)
class CatalogueEntry:
    """A known package: downloaded from `url`, or bundled at `path` (relative to Resources)."""

    name: str
    description: str = ""
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    path: str | None = None
    network: str | None = None
    license: str | None = None


def load_catalogue(path: Path | None = None) -> dict[str, CatalogueEntry]:
    """Entries of Resources/models.json by name (an absent file is an empty catalogue)."""
    path = path or resources_dir() / CATALOGUE_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelPackageError(f"{path}: unreadable model catalogue ({e})") from None
    entries = {}
    for item in raw.get("models", []):
        fields = {k: item.get(k) for k in CatalogueEntry.__dataclass_fields__}
        entry = CatalogueEntry(**fields)
        if not entry.url and not entry.path:
            raise ModelPackageError(f"{path}: model {entry.name!r} has neither url nor path")
        if entry.url and not (entry.sha256 and entry.size):
            raise ModelPackageError(f"{path}: model {entry.name!r} has a url but no sha256 and size")
        entries[entry.name] = entry
    return entries


def download(url: str, sha256: str, size: int, *, dest_dir: Path | None = None,
             progress: bool = True, chunk: int = 1 << 20, timeout: float = 60.0) -> Path:
    """Download `url` into the cache once; resume a `.part` file; verify size and sha256.

    Returns the cached file. A mismatch removes the partial data and raises ModelPackageError.
    """
    from tqdm import tqdm

    from BraTSMambaLib.inference.package import sha256_file

    dest_dir = dest_dir or cache_dir() / "downloads"
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / f"{sha256}{Path(url.split('?')[0]).suffix or '.zip'}"
    if target.is_file() and target.stat().st_size == size and sha256_file(target) == sha256:
        return target
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have < size:
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                if have and resp.status != 206:  # server ignored Range: start again
                    have = 0
                mode = "ab" if have else "wb"
                with open(part, mode) as f, tqdm(total=size, initial=have, unit="B", unit_scale=True,
                                                   desc=f"download {Path(url).name}", disable=not progress) as bar:
                    while block := resp.read(chunk):
                        f.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise ModelPackageError(f"{url}: download failed ({getattr(e, 'reason', e)}); run again to resume "
                                    f"({part.stat().st_size if part.exists() else 0} of {size} bytes kept)") from None
    got = part.stat().st_size
    if got != size:
        raise ModelPackageError(f"{url}: download incomplete ({got} of {size} bytes); run again to resume")
    digest = sha256_file(part)
    if digest != sha256:
        part.unlink()
        raise ModelPackageError(f"{url}: checksum mismatch (sha256 {digest[:12]}..., catalogue says "
                                f"{sha256[:12]}...); the partial download was removed")
    os.replace(part, target)
    return target


def fetch(entry: CatalogueEntry, *, progress: bool = True) -> Path:
    """A local path for a catalogue entry: bundled path, or the verified cached download."""
    if entry.path:
        p = Path(entry.path)
        p = p if p.is_absolute() else resources_dir() / p
        if not p.exists():
            raise ModelPackageError(f"model {entry.name!r}: bundled package {p} is missing")
        return p
    return download(entry.url, entry.sha256, int(entry.size), progress=progress)


def demo_package_path() -> Path | None:
    """The bundled demo package (Resources/Models/demo folder or demo.zip), None when not shipped yet."""
    for p in (resources_dir() / "Models" / DEMO_MODEL, resources_dir() / "Models" / f"{DEMO_MODEL}.zip"):
        if p.exists():
            return p
    entry = load_catalogue().get(DEMO_MODEL)
    if entry and entry.path:
        p = resources_dir() / entry.path
        return p if p.exists() else None
    return None


def is_nnunet_results(path: Path) -> bool:
    return path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file() \
        and any(path.glob("fold_*"))


def resolve_model(spec: str | os.PathLike | None, *, progress: bool = True,
                  importer: Callable[[Path], Path] | None = None):
    """Open the ModelPackage `spec` names: a package folder/zip, an nnU-Net results folder (imported
    once into the cache), or a catalogue name (downloaded once). None means the bundled demo model."""
    from BraTSMambaLib.inference.package import is_package, open_package

    if spec is None or str(spec) == "":
        spec = DEMO_MODEL
    path = Path(spec).expanduser()
    if path.exists():
        if is_nnunet_results(path):
            from BraTSMambaLib.inference.nnunet_import import cached_import

            return open_package((importer or cached_import)(path))
        if is_package(path):
            return open_package(path)
        raise ModelPackageError(f"{path}: neither a model package (model.json), a .zip package, nor an "
                                "nnU-Net results folder (plans.json, dataset.json, fold_*/)")
    catalogue = load_catalogue()
    if str(spec) == DEMO_MODEL:
        demo = demo_package_path()
        if demo is None:
            raise ModelPackageError(
                f"the demo model package is not bundled yet (expected {resources_dir() / 'Models' / DEMO_MODEL}); "
                "give --model a package, an nnU-Net results folder or a catalogue name")
        return open_package(demo)
    if str(spec) in catalogue:
        return open_package(fetch(catalogue[str(spec)], progress=progress))
    by_network = [e for e in catalogue.values() if e.network and e.network.lower() == str(spec).lower()]
    if by_network:  # a registry name: its first trained package in the catalogue
        return open_package(fetch(by_network[0], progress=progress))
    known = ", ".join(sorted(catalogue)) or "none"
    registry_hint = ""
    try:
        from BraTSMambaLib import nets

        if str(spec) in getattr(nets, "list_models", lambda: [])():
            registry_hint = (f"; {spec} is a network architecture, and no trained package for it is in the "
                             "catalogue (untrained weights are never used for segmentation)")
    except ImportError:
        pass
    raise ModelPackageError(f"--model {spec}: not a file or folder, nor a catalogue model (known: {known})"
                            f"{registry_hint}")
