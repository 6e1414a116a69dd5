"""Sweeps: the grid search of DIFT's paper (timestep x layer, plus any other option) scored by J&F.

:func:`build_grid` turns ``--grid KEY=V1,V2,...`` axes into validated grid points;
:func:`run_sweep` runs them with the least work (each feature setting extracted once per frame,
several propagation settings fed by one pass over a video's features), resumably, and writes
``sweep.csv``, ``best.yaml`` and the plots.
"""

from vidprop.sweep.data import DavisSweepData, FolderSweepData, SweepVideo
from vidprop.sweep.grid import Axis, Grid, GridPoint, build_grid, parse_axis
from vidprop.sweep.report import PointResult
from vidprop.sweep.runner import SweepResult, run_sweep

__all__ = [
    "Axis",
    "Grid",
    "GridPoint",
    "build_grid",
    "parse_axis",
    "DavisSweepData",
    "FolderSweepData",
    "SweepVideo",
    "PointResult",
    "SweepResult",
    "run_sweep",
]
