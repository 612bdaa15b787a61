"""Build the network a model package names (through the `nets` registry) and load weights strictly."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.errors import ModelPackageError

if TYPE_CHECKING:
    import torch

    from BraTSMambaLib.inference.package import ModelPackage


def build_network(pkg: "ModelPackage") -> "torch.nn.Module":
    """The package's registry network, built as it was trained, with deep supervision switched off.

    Built with the training-time deep-supervision setting so that its heads (and their weights)
    exist, then switched off, so a strict load sees exactly the trained keys.
    """
    from BraTSMambaLib import nets

    spec = pkg.network
    name = pkg.network_name
    ds = bool(spec.get("deep_supervision", False))
    try:
        if spec.get("from_plans"):
            from BraTSMambaLib.inference.preprocessing import plans_for

            pm, cm, _ = plans_for(pkg)
            model = nets.build_model(name, in_channels=len(C.MODALITIES), out_channels=len(C.REGIONS),
                                     patch_size=pkg.patch_size, deep_supervision=ds, plans=cm,
                                     **dict(spec.get("overrides") or {}))
        else:
            model = nets.build_model(name, in_channels=len(C.MODALITIES), out_channels=len(C.REGIONS),
                                     patch_size=pkg.patch_size, deep_supervision=ds, **dict(spec.get("overrides") or {}))
    except (KeyError, ValueError, TypeError) as e:  # BraTSInputError is a ValueError
        known = ", ".join(nets.list_models()) if hasattr(nets, "list_models") else "see `brats-mamba models`"
        raise ModelPackageError(f"{pkg.source}: cannot build network {name!r} ({e}); registry models: {known}") from None
    if ds:
        nets.set_deep_supervision(model, False)
    return model


def load_strict(model: "torch.nn.Module", state_dict: Mapping, source: str, network_name: str) -> None:
    """Load `state_dict` with strict key and shape checks; ModelPackageError listing the mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
        raise ModelPackageError(f"{source}: weights do not fit {network_name}: {'; '.join(parts)} "
                                "- the package holds another architecture or configuration")
    model.load_state_dict(dict(state_dict), strict=True)
