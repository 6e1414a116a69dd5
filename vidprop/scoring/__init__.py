"""Scoring stage: DAVIS-2017 J&F, identical to the official evaluation, and fast.

Names load lazily: ``vidprop.scoring.config`` imports without numpy or OpenCV, and the scorer
itself imports numpy and OpenCV only (no torch), so that ``vidprop evaluate`` starts quickly.
"""

from vidprop.lazy import lazy_exports

_EXPORTS = {
    "ScoringConfig": "config",
    "DavisScores": "evaluate",
    "ObjectScores": "evaluate",
    "evaluate_davis": "evaluate",
    "evaluate_folders": "evaluate",
    "write_reports": "report",
    "format_table": "report",
    "region_similarity": "measures",
    "boundary_f_measure": "measures",
    "boundary_map": "measures",
    "sequence_statistics": "measures",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
