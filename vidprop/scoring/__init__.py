"""Scoring stage: DAVIS-2017 J&F, identical to the official evaluation, and fast.

Importing this package imports numpy and OpenCV only (no torch), so that ``vidprop evaluate``
starts quickly.
"""

from vidprop.scoring.config import ScoringConfig
from vidprop.scoring.evaluate import DavisScores, ObjectScores, evaluate_davis, evaluate_folders
from vidprop.scoring.measures import boundary_f_measure, boundary_map, region_similarity, sequence_statistics
from vidprop.scoring.report import format_table, write_reports

__all__ = [
    "ScoringConfig",
    "DavisScores",
    "ObjectScores",
    "evaluate_davis",
    "evaluate_folders",
    "write_reports",
    "format_table",
    "region_similarity",
    "boundary_f_measure",
    "boundary_map",
    "sequence_statistics",
]
