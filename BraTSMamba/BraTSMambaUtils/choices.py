"""What the module's combo boxes offer and what their values mean for the CLI, without Qt.

The widget fills its combo boxes from these lists (title shown, value stored as item data) and turns
the selection back into `brats-mamba segment` arguments with `model_argument`; tests check that
every value here is one the CLI accepts.
"""
from __future__ import annotations

import logging

#: (title, --device value)
DEVICES: tuple[tuple[str, str], ...] = (
    ("Auto", "auto"), ("CUDA GPU", "cuda"), ("CPU", "cpu"), ("Apple GPU (MPS)", "mps"))
#: (title, --labels value)
LABEL_CONVENTIONS: tuple[tuple[str, str], ...] = (("BraTS 2021 (1, 2, 4)", "2021"), ("BraTS 2023 (1, 2, 3)", "2023"))

#: Model combo item data: the bundled demo package, and "use the path field".
DEMO_CHOICE = "<demo>"
LOCAL_CHOICE = "<local>"
LOCAL_TITLE = "Local package or nnU-Net folder (below)"
LOCAL_INFO = "A model package folder/.zip or an nnU-Net v2 results folder trained with our trainers."


def model_choices() -> list[tuple[str, str, str]]:
    """(title, item data, what it needs) for the demo, each catalogue model, and the local path choice.

    A catalogue that cannot be read is logged and skipped: the module must still open.
    """
    from BraTSMambaLib.inference import catalogue

    try:
        entries = catalogue.load_catalogue()
    except Exception as e:
        logging.warning(f"BraTSMamba: model catalogue unreadable: {e}")
        entries = None
    try:  # looks on disk first, then in the catalogue (which may be the broken part)
        demo = catalogue.demo_package_path()
    except Exception as e:
        logging.warning(f"BraTSMamba: demo package lookup failed: {e}")
        demo = None
    choices = [("Demo model (bundled)", DEMO_CHOICE,
                f"Bundled with the extension: {demo}" if demo else
                "The demo package is not bundled in this build: choose another model.")]
    for name, entry in sorted((entries or {}).items()):
        if name == catalogue.DEMO_MODEL:
            continue
        cached = bool(entry.sha256) and (catalogue.cache_dir() / "downloads" / f"{entry.sha256}.zip").exists()
        needs = "cached" if cached or entry.path else (
            f"downloads {entry.size / 1e6:.0f} MB once" if entry.size else "downloads once")
        network = f"{entry.network}; " if entry.network else ""
        choices.append((f"{name} ({needs})", name, f"{network}{entry.description}".strip()))
    choices.append((LOCAL_TITLE, LOCAL_CHOICE, LOCAL_INFO))
    return choices


def model_argument(choice: str | None, local_path: str = "") -> str:
    """The parameter node's `model` string ("" = the demo) for a combo selection and the path field."""
    if choice == LOCAL_CHOICE:
        return local_path.strip()
    if choice in (None, "", DEMO_CHOICE):
        return ""
    return choice


def choice_for_model(model: str, values: list[str]) -> tuple[str, str]:
    """(combo item data, path field text) that show a stored `model` string among `values`."""
    if not model:
        return DEMO_CHOICE, ""
    if model in values:
        return model, ""
    return LOCAL_CHOICE, model
