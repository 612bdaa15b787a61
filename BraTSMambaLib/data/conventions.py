"""BraTS conventions: the one home for modality names, file naming, labels, regions and colours.

Verified against the official sources (see docs/conventions.md):

| convention | labels                              | WT      | TC    | ET |
|------------|-------------------------------------|---------|-------|----|
| 2021       | 1 NCR/NET, 2 ED, 4 ET (2018-2021)    | 1+2+4   | 1+4   | 4  |
| 2023       | 1 NETC, 2 SNFH, 3 ET (2023 GLI)      | 1+2+3   | 1+3   | 3  |
| nnunet     | 1 ED, 2 NCR, 3 ET (Dataset137)       | 1+2+3   | 2+3   | 3  |

Every other module imports these facts from here; nothing else spells a label value.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from BraTSMambaLib.errors import BraTSInputError

# --- modalities -------------------------------------------------------------------------------

#: Canonical modality order: network input channels and nnU-Net `_0000`.. `_0003`.
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

MODALITY_TITLES: Mapping[str, str] = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}

#: Modality used as the reference grid (resampling target, output geometry).
REFERENCE_MODALITY = "t1ce"


@dataclass(frozen=True)
class Naming:
    """A file-naming convention: `<case><sep><suffix>.<ext>` per modality, plus the label file."""

    name: str
    separator: str
    suffixes: Mapping[str, str]  # canonical modality (or "seg") -> suffix in file names

    def filename(self, case_id: str, key: str, ext: str = ".nii.gz") -> str:
        return f"{case_id}{self.separator}{self.suffixes[key]}{ext}"


NAMINGS: Mapping[str, Naming] = {
    "brats2021": Naming("brats2021", "_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}),
    "brats2023": Naming("brats2023", "-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}),
    "nnunet": Naming("nnunet", "_", {"t1": "0000", "t1ce": "0001", "t2": "0002", "flair": "0003"}),
}

IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

_FILE_RE = re.compile(
    r"^(?P<case>.+?)(?P<sep>[_-])(?P<suffix>t1ce|t1c|t1n|t1|t2w|t2f|t2|flair|seg|000[0-3])"
    r"(?P<ext>\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd)$",
    re.IGNORECASE,
)


def parse_filename(filename: str) -> tuple[str, str, str] | None:
    """Return (case_id, key, naming) for a BraTS or nnU-Net file name, `key` a modality or "seg".

    None when the name follows no known convention.
    """
    m = _FILE_RE.match(filename)
    if not m:
        return None
    suffix, sep = m["suffix"].lower(), m["sep"]
    for naming in NAMINGS.values():
        if naming.separator != sep:
            continue
        for key, s in naming.suffixes.items():
            if s == suffix:
                return m["case"], key, naming.name
    return None


# --- labels and regions -----------------------------------------------------------------------

#: Tumour sub-regions (tissue classes) in the order nnU-Net paints them.
TISSUES: tuple[str, ...] = ("edema", "necrosis", "enhancing")

#: Evaluated regions, their network output channel order, and the tissues they contain.
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
REGION_TISSUES: Mapping[str, frozenset[str]] = {
    "WT": frozenset({"edema", "necrosis", "enhancing"}),
    "TC": frozenset({"necrosis", "enhancing"}),
    "ET": frozenset({"enhancing"}),
}
REGION_TITLES: Mapping[str, str] = {"WT": "Whole tumour", "TC": "Tumour core", "ET": "Enhancing tumour"}


@dataclass(frozen=True)
class LabelConvention:
    """Integer label value of each tissue in one convention."""

    name: str
    values: Mapping[str, int]  # tissue -> label value
    titles: Mapping[str, str]  # tissue -> the convention's own name for it

    @property
    def allowed(self) -> frozenset[int]:
        return frozenset({0, *self.values.values()})

    def region_labels(self, region: str) -> tuple[int, ...]:
        return tuple(sorted(self.values[t] for t in REGION_TISSUES[region]))


LABEL_CONVENTIONS: Mapping[str, LabelConvention] = {
    "2021": LabelConvention(
        "2021", {"necrosis": 1, "edema": 2, "enhancing": 4}, {"necrosis": "NCR/NET", "edema": "ED", "enhancing": "ET"}
    ),
    "2023": LabelConvention(
        "2023", {"necrosis": 1, "edema": 2, "enhancing": 3}, {"necrosis": "NETC", "edema": "SNFH", "enhancing": "ET"}
    ),
    "nnunet": LabelConvention(
        "nnunet", {"edema": 1, "necrosis": 2, "enhancing": 3}, {"edema": "ED", "necrosis": "NCR", "enhancing": "ET"}
    ),
}

#: nnU-Net region-training definitions (dataset.json `labels` and `regions_class_order`).
NNUNET_REGIONS: Mapping[str, tuple[int, ...]] = {r: LABEL_CONVENTIONS["nnunet"].region_labels(r) for r in REGIONS}
NNUNET_REGIONS_CLASS_ORDER: tuple[int, ...] = (1, 2, 3)


def label_convention(name: str | int) -> LabelConvention:
    """Look a convention up by name ("2021", "2023", "nnunet"); 2018-2020 are aliases of 2021."""
    key = str(name).lower()
    key = {"2018": "2021", "2019": "2021", "2020": "2021", "2024": "2023", "nnu-net": "nnunet"}.get(key, key)
    try:
        return LABEL_CONVENTIONS[key]
    except KeyError:
        raise BraTSInputError(f"unknown label convention {name!r}; use one of {sorted(LABEL_CONVENTIONS)}") from None


def check_labels(labels: np.ndarray, convention: str | int, source: str = "label map") -> None:
    """Raise BraTSInputError when `labels` holds values outside `convention`."""
    conv = label_convention(convention)
    labels = np.asarray(labels)
    if labels.dtype.kind in "ub" and labels.size:
        found = np.flatnonzero(np.bincount(labels.ravel()))
    else:
        found = np.unique(labels)
    bad = sorted(float(v) if v != np.round(v) else int(v) for v in found if v not in conv.allowed or v != np.round(v))
    if bad:
        raise BraTSInputError(
            f"{source}: label values {bad} are not in the BraTS {conv.name} convention "
            f"(allowed {sorted(conv.allowed)})"
        )


def convert_labels(labels: np.ndarray, src: str | int, dst: str | int) -> np.ndarray:
    """Map a label map from one convention to another (values outside `src` are refused)."""
    s, d = label_convention(src), label_convention(dst)
    check_labels(labels, s.name)
    out = np.zeros(labels.shape, dtype=np.uint8)
    for tissue, value in s.values.items():
        out[labels == value] = d.values[tissue]
    return out


def labels_to_regions(labels: np.ndarray, convention: str | int = "2021") -> np.ndarray:
    """Binary region masks, shape (3, *labels.shape) in REGIONS order (WT, TC, ET)."""
    conv = label_convention(convention)
    check_labels(labels, conv.name)
    return np.stack([np.isin(labels, conv.region_labels(r)) for r in REGIONS])


def regions_to_labels(regions: np.ndarray, convention: str | int = "2021") -> np.ndarray:
    """Assemble a label map from (3, ...) region masks in REGIONS order, as nnU-Net does.

    nnU-Net's `regions_class_order=(1, 2, 3)` paints WT, then TC, then ET over it, so a voxel
    in TC but outside WT still becomes core: regions need not be nested.
    """
    regions = np.asarray(regions)
    if regions.shape[0] != len(REGIONS):
        raise BraTSInputError(f"expected {len(REGIONS)} region masks (WT, TC, ET), got {regions.shape[0]}")
    nn = LABEL_CONVENTIONS["nnunet"]
    internal = np.zeros(regions.shape[1:], dtype=np.uint8)
    for label, mask in zip(NNUNET_REGIONS_CLASS_ORDER, regions):
        internal[mask.astype(bool)] = label
    return internal if label_convention(convention) is nn else convert_labels(internal, nn.name, convention)


# --- presentation -----------------------------------------------------------------------------

#: Segment colours (RGB in 0..1), shared by Slicer segments, .seg.nrrd files and overlays.
REGION_COLORS: Mapping[str, tuple[float, float, float]] = {
    "WT": (0.30, 0.75, 0.35),
    "TC": (0.98, 0.80, 0.20),
    "ET": (0.90, 0.15, 0.15),
}

#: DICOM/SNOMED-CT terminology shared by the three regions: (coding scheme, code value, meaning)
#: for the category and the type. The regions are told apart by name and colour.
TERMINOLOGY_CATEGORY: tuple[str, str, str] = ("SCT", "49755003", "Morphologically Altered Structure")
TERMINOLOGY_TYPE: tuple[str, str, str] = ("SCT", "108369006", "Neoplasm")
