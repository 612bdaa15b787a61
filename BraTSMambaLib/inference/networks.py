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
    overrides = dict(spec.get("overrides") or {})
    try:
        if spec.get("from_plans"):
            from BraTSMambaLib.inference.preprocessing import plans_for

            overrides["plans"] = plans_for(pkg)[1]
        model = nets.build_model(name, in_channels=len(C.MODALITIES), out_channels=len(C.REGIONS),
                                 patch_size=pkg.patch_size, deep_supervision=ds, **overrides)
    except (KeyError, ValueError, TypeError) as e:  # BraTSInputError is a ValueError
        known = ", ".join(nets.list_models())
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


#: Module classes whose forward runs in fp32 by design (they cast their input themselves); a network
#: cast to bf16/fp16 keeps them in fp32 and casts their output back. A class may also opt in with a
#: true `inference_fp32` attribute.
def _fp32_module_types() -> tuple[type, ...]:
    from BraTSMambaLib.nets.umamba import MambaLayer as UMambaLayer

    return (UMambaLayer,)


def _is_fp32_island(module: "torch.nn.Module") -> bool:
    return bool(getattr(module, "inference_fp32", False)) or isinstance(module, _fp32_module_types())


def cast_network(model: "torch.nn.Module", dtype: "torch.dtype") -> "torch.nn.Module":
    """Cast a network's weights to `dtype` in place for autocast-free inference; returns it.

    Kept in fp32: fp32 islands (U-Mamba's Mamba layer; its output is cast back to `dtype` by a
    forward hook) and the selective-scan parameters A_log/D of every Mamba layer (the scans read
    them as fp32 and accumulate in fp32).
    """
    import torch

    from BraTSMambaLib.ssm.modules.mamba import Mamba

    model.to(dtype)
    for module in model.modules():
        if _is_fp32_island(module):
            module.float()
            module.register_forward_hook(lambda _m, _inp, out, dt=dtype: out.to(dt)
                                         if isinstance(out, torch.Tensor) else out)
        elif isinstance(module, Mamba):
            for name, p in module.named_parameters(recurse=False):
                if name.startswith("A") and name.endswith("_log") or name.startswith("D"):
                    p.data = p.data.float()
    return model


def to_memory_format(model: "torch.nn.Module", channels_last: bool) -> "torch.nn.Module":
    """5-D weights (3-D convolutions) to channels_last_3d (NDHWC) or back to contiguous, in place."""
    import torch

    return model.to(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)


def _has_scan(module: "torch.nn.Module") -> bool:
    from BraTSMambaLib.ssm.modules.mamba import Mamba

    return any(isinstance(m, Mamba) for m in module.modules())


def compile_network(model: "torch.nn.Module", mode: str = "default", scope: str = "whole") -> "torch.nn.Module":
    """torch.compile a network in place (`nn.Module.compile`: state-dict keys unchanged); returns it.

    scope "whole": the network's forward (Dynamo splits the graph around the scan kernels itself);
    "convs": only the largest sub-modules without a Mamba layer, so the selective scans stay eager.
    Compilation happens on the first forward pass of each input shape (dynamic=False).
    """
    kwargs = {"dynamic": False}
    if mode != "default":
        kwargs["mode"] = mode
    if scope == "whole":
        model.compile(**kwargs)
        return model
    if scope != "convs":
        raise ValueError(f"compile scope {scope!r}: use whole or convs")

    from BraTSMambaLib.ssm.modules.mamba import Mamba

    def visit(module: "torch.nn.Module") -> None:
        for child in module.children():
            if not _has_scan(child):
                if any(True for _ in child.parameters()):
                    child.compile(**kwargs)
            elif not isinstance(child, Mamba):
                visit(child)

    if not _has_scan(model):
        model.compile(**kwargs)
    else:
        visit(model)
    return model
