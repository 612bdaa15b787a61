"""BraTS metrics: Dice, HD95 (mm), sensitivity, specificity and volumes per region, with the legacy
empty-mask rules, for arrays, files and folders (see docs/metrics.md)."""
from BraTSMambaLib.metrics.binary import (
    EMPTY_HD95_MM,
    HIGHER_IS_BETTER,
    METRIC_TITLES,
    METRICS,
    hd95,
    region_metrics,
    surface,
    surface_distances,
)
from BraTSMambaLib.metrics.evaluate import (
    CaseMetrics,
    CaseResult,
    EvaluationResults,
    case_id_of,
    evaluate_files,
    evaluate_folders,
    evaluate_labels,
    match_cases,
    summarize,
)

__all__ = [
    "EMPTY_HD95_MM",
    "HIGHER_IS_BETTER",
    "METRICS",
    "METRIC_TITLES",
    "CaseMetrics",
    "CaseResult",
    "EvaluationResults",
    "case_id_of",
    "evaluate_files",
    "evaluate_folders",
    "evaluate_labels",
    "hd95",
    "match_cases",
    "region_metrics",
    "summarize",
    "surface",
    "surface_distances",
]
