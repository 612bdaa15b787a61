"""Annotation review in MRML: step through BraTS cases, show the ground truth and/or a prediction as
WT/TC/ET segmentations on the four modalities, score the prediction, record a verdict per case.

Qt-free (runs in Slicer and with PyPI slicer-core). Cases are read and validated by the data layer
(`data.case.load_case`), put into volume nodes with their geometry (LPS -> RAS), label maps become
segmentations through `mrml.segmentation.segmentation_from_prediction` (names, colours, terminology
from `data.conventions`), scores come from `metrics.region_metrics`, verdicts go to
`data.review_log.ReviewLog`. The Slicer training module only moves values between these and its UI.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from BraTSMambaLib.data import conventions as C
from BraTSMambaLib.data.io import extension, geometry_differences, read_image, write_label_map
from BraTSMambaLib.data.review_log import ReviewLog
from BraTSMambaLib.errors import BraTSInputError

#: A prediction folder may hold several files per case (`brats-mamba segment` writes both): first wins.
PREDICTION_PREFERENCE: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass
class ReviewCase:
    """One case folder to review, and the prediction file matched to it (if any)."""

    case_id: str
    folder: Path
    naming: str
    has_ground_truth: bool
    prediction: Path | None = None


def _prediction_files(folder: Path) -> list[Path]:
    """One label file per case id in a prediction folder (PREDICTION_PREFERENCE decides between formats)."""
    from BraTSMambaLib.metrics.evaluate import case_id_of, label_files

    best: dict[str, Path] = {}
    rank = {ext: i for i, ext in enumerate(PREDICTION_PREFERENCE)}
    for p in label_files(folder):
        cid = case_id_of(p)
        if cid not in best or rank.get(extension(p), 99) < rank.get(extension(best[cid]), 99):
            best[cid] = p
    return sorted(best.values())


def find_review_cases(cases_dir: str | os.PathLike, predictions_dir: str | os.PathLike | None = None
                      ) -> tuple[list[ReviewCase], list[str]]:
    """(valid case folders under `cases_dir`, sorted, each with its prediction; problems of the folders skipped).

    Predictions are matched by case id as `brats-mamba evaluate` matches them (`metrics.match_cases`).
    A folder with a missing, duplicate or ambiguous file is skipped with its problem, so that one broken
    case does not block a review of many; BraTSInputError when no valid case remains.
    """
    from BraTSMambaLib.data.case import find_cases, scan_folder
    from BraTSMambaLib.metrics.evaluate import match_cases

    cases, problems = [], []
    for folder in find_cases(cases_dir):
        scan = scan_folder(folder)
        if scan.problems:
            problems.append("; ".join(scan.problems))
            continue
        cases.append(ReviewCase(scan.case_id, folder, scan.naming, "seg" in scan.files))
    if not cases:
        raise BraTSInputError(f"{cases_dir}: no BraTS case folders found" + (f" ({problems[0]})" if problems else ""))
    if predictions_dir:
        by_ref = {Path(C.NAMINGS["brats2021"].filename(c.case_id, "seg")): c for c in cases}
        pairs, _, _ = match_cases(_prediction_files(Path(predictions_dir)), list(by_ref))
        for _cid, pred, ref in pairs:
            by_ref[ref].prediction = pred
    return cases, problems


def list_review_cases(cases_dir: str | os.PathLike,
                      predictions_dir: str | os.PathLike | None = None) -> list[ReviewCase]:
    """Like `find_review_cases`, but a broken case folder is an error (BraTSInputError naming its files)."""
    cases, problems = find_review_cases(cases_dir, predictions_dir)
    if problems:
        raise BraTSInputError("; ".join(problems))
    return cases


@dataclass
class LoadedCase:
    """The nodes one case put into the scene, and the prediction's scores against the ground truth."""

    case: ReviewCase
    volumes: dict[str, object]
    labels: str | None = None                  # label convention of the ground truth
    ground_truth: object | None = None         # vtkMRMLSegmentationNode
    prediction: object | None = None           # vtkMRMLSegmentationNode
    metrics: dict[str, dict[str, float]] | None = None

    @property
    def reference(self):
        return self.volumes[C.REFERENCE_MODALITY]

    @property
    def dice(self) -> dict[str, float] | None:
        return {r: m["dice"] for r, m in self.metrics.items()} if self.metrics else None

    def nodes(self) -> list:
        return [*self.volumes.values(), *(n for n in (self.ground_truth, self.prediction) if n is not None)]


def prediction_masks(path: Path, reference_image, reference_node) -> dict[str, np.ndarray]:
    """(z, y, x) region masks of a prediction file on the case's T1ce grid (checked).

    `.seg.nrrd` files need segments named WT, TC, ET (what the CLI writes); label maps use either BraTS
    convention (4 present: 2021, else 2023; both give labels 1 and 2 the same tissues).
    """
    from BraTSMambaLib.mrml.pipeline import read_seg_nrrd_masks

    if extension(path) == ".seg.nrrd":
        return read_seg_nrrd_masks(path, reference_node)
    image = read_image(path)
    diffs = geometry_differences(image, reference_image, name=path.name, ref_name="T1ce")
    if diffs:
        raise BraTSInputError(f"{path}: grid does not match the case's T1ce: {'; '.join(diffs)}")
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(image)
    convention = "2021" if np.any(labels == 4) else "2023"
    return dict(zip(C.REGIONS, C.labels_to_regions(labels, convention)))


def load_review_case(scene, case: ReviewCase, *, show3d: bool = False) -> LoadedCase:
    """Put a case into `scene`: four volume nodes, the ground truth and the prediction as WT/TC/ET
    segmentations (ground truth drawn as outlines, prediction filled), and the prediction's Dice/HD95.

    Everything is validated before the first node is added; on failure nothing stays in the scene.
    """
    from BraTSMambaLib.data.case import load_case
    from BraTSMambaLib.metrics.binary import region_metrics
    from BraTSMambaLib.metrics.evaluate import spacing_zyx
    from BraTSMambaLib.mrml.geometry import volume_node_from_image
    from BraTSMambaLib.mrml.segmentation import segmentation_from_prediction

    data = load_case(case.folder)
    naming = C.NAMINGS[data.naming or "brats2021"]
    added = []
    try:
        volumes = {}
        for m in C.MODALITIES:
            volumes[m] = volume_node_from_image(scene, data.images[m], naming.filename(data.case_id, m, ""))
            volumes[m].CreateDefaultDisplayNodes()
            added.append(volumes[m])
        loaded = LoadedCase(case, volumes, labels=data.labels)
        truth = None
        if data.seg is not None:
            truth = dict(zip(C.REGIONS, C.labels_to_regions(data.seg_array(), data.labels)))
            loaded.ground_truth = segmentation_from_prediction(scene, truth, loaded.reference,
                                                               f"{data.case_id} ground truth", show3d=show3d)
            added.append(loaded.ground_truth)
            display = loaded.ground_truth.GetDisplayNode()
            if display is not None:
                display.SetVisibility2DFill(False)
                display.SetSliceIntersectionThickness(2)
        if case.prediction is not None:
            pred = prediction_masks(Path(case.prediction), data.reference, loaded.reference)
            loaded.prediction = segmentation_from_prediction(scene, pred, loaded.reference,
                                                             f"{data.case_id} prediction", show3d=show3d)
            added.append(loaded.prediction)
            if truth is not None:
                spacing = spacing_zyx(data.reference)
                loaded.metrics = {r: region_metrics(pred[r], truth[r], spacing) for r in C.REGIONS}
    except BaseException:
        for node in added:
            scene.RemoveNode(node)
        raise
    return loaded


def remove_loaded(scene, loaded: LoadedCase | None) -> None:
    """Take a case's nodes out of the scene again (stepping to the next case)."""
    if loaded is None:
        return
    for node in loaded.nodes():
        if node.GetScene() is scene:
            scene.RemoveNode(node)


def corrected_labelmap_path(case: ReviewCase, out_dir: str | os.PathLike) -> Path:
    """`<out_dir>/<case>_seg.nii.gz` (BraTS 2021 naming) or `<case>-seg.nii.gz` (2023): the case's own naming."""
    naming = case.naming if case.naming in ("brats2021", "brats2023") else "brats2021"
    return Path(out_dir) / C.NAMINGS[naming].filename(case.case_id, "seg")


def save_corrected_labelmap(segmentation_node, loaded: LoadedCase, out_dir: str | os.PathLike, *,
                            convention: str | None = None, overwrite: bool = False) -> Path:
    """Write an (edited) WT/TC/ET segmentation as the case's BraTS label map, on the T1ce grid, atomically.

    The label convention follows the case (its ground truth's, else its naming's); labels are
    assembled from the regions in nnU-Net's order (`conventions.regions_to_labels`).
    """
    from BraTSMambaLib.mrml.geometry import image_from_volume_node
    from BraTSMambaLib.mrml.segmentation import segment_masks

    case = loaded.case
    conv = convention or loaded.labels or ("2023" if case.naming == "brats2023" else "2021")
    masks = segment_masks(segmentation_node, loaded.reference)
    labels = C.regions_to_labels(np.stack([masks[r] for r in C.REGIONS]), conv)
    return write_label_map(labels, image_from_volume_node(loaded.reference), corrected_labelmap_path(case, out_dir),
                           overwrite=overwrite)


@dataclass
class ReviewSession:
    """A review in progress: the cases, the verdict file, the current case and its nodes."""

    cases: list[ReviewCase]
    log: ReviewLog
    index: int = 0
    loaded: LoadedCase | None = None
    reviewer: str = ""
    skipped: list[str] = field(default_factory=list)  # problems of case folders left out

    @classmethod
    def open(cls, cases_dir: str | os.PathLike, review_file: str | os.PathLike,
             predictions_dir: str | os.PathLike | None = None, reviewer: str = "") -> "ReviewSession":
        """List the cases, read the verdicts given so far, and start at the first case without one."""
        cases, skipped = find_review_cases(cases_dir, predictions_dir)
        log = ReviewLog.open(review_file)
        return cls(cases, log, log.first_unreviewed([c.case_id for c in cases]), reviewer=reviewer, skipped=skipped)

    @property
    def current(self) -> ReviewCase:
        return self.cases[self.index]

    def show(self, scene, index: int | None = None, *, show3d: bool = False) -> LoadedCase:
        """Load case `index` (default: the current one), replacing the previous case's nodes.

        A case that cannot be loaded still becomes the current one (with no nodes), so that it can be
        given a verdict (e.g. reject, with the error as the note); the error is raised.
        """
        index = self.index if index is None else index
        if not 0 <= index < len(self.cases):
            raise BraTSInputError(f"case index {index} outside 0..{len(self.cases) - 1}")
        try:
            loaded = load_review_case(scene, self.cases[index], show3d=show3d)
        except BraTSInputError:
            remove_loaded(scene, self.loaded)
            self.index, self.loaded = index, None
            raise
        remove_loaded(scene, self.loaded)
        self.index, self.loaded = index, loaded
        return loaded

    def step(self, scene, delta: int, **kwargs) -> LoadedCase | None:
        """Previous (-1) / next (+1) case; None at either end (nothing changes)."""
        target = self.index + delta
        if not 0 <= target < len(self.cases):
            return None
        return self.show(scene, target, **kwargs)

    def record(self, verdict: str, note: str = "") -> dict[str, str]:
        """The verdict for the current case, with the prediction's Dice when it was scored."""
        dice = self.loaded.dice if self.loaded is not None and self.loaded.case is self.current else None
        return self.log.record(self.current.case_id, verdict, note, dice=dice, reviewer=self.reviewer)

    def progress_text(self) -> str:
        ids = [c.case_id for c in self.cases]
        counts = self.log.counts(ids)
        done = sum(counts.values())
        detail = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        text = f"case {self.index + 1}/{len(self.cases)}; reviewed {done}" + (f" ({detail})" if detail else "")
        return text + (f"; {len(self.skipped)} folder(s) skipped: {self.skipped[0]}" if self.skipped else "")
