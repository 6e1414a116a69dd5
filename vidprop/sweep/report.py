"""A sweep's results: one record per finished grid point, ``sweep.csv`` and ``best.yaml``.

Each finished point keeps ``points/<name>/result.json`` (full-precision scores, the point's
fingerprint and the data it was scored on); that file is what makes the point "finished" when
the sweep is run again. ``sweep.csv`` and ``best.yaml`` are rewritten from those records after
every point, in grid order, so an interrupted sweep always has a valid table of what is done.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from vidprop.io.atomic import atomic_write
from vidprop.sweep.grid import Grid, GridPoint, format_value

__all__ = ["PointResult", "RESULT_FILE", "CSV_FILE", "BEST_FILE", "load_result", "save_result", "write_csv", "write_best", "best_result"]

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
CSV_FILE = "sweep.csv"
BEST_FILE = "best.yaml"


@dataclasses.dataclass(frozen=True)
class PointResult:
    """Scores of one grid point (unrounded).

    Attributes:
        index: the point's index in the grid.
        j_and_f, j_mean, f_mean: the global DAVIS statistics (means over all objects).
        per_sequence: J&F of each sequence (mean over its objects of (J-Mean + F-Mean) / 2), in
            scoring order.
        seconds: the point's own propagation, mask writing and scoring time plus its share of
            the feature pass it took part in (shared passes are split evenly between their points).
    """

    index: int
    j_and_f: float
    j_mean: float
    f_mean: float
    per_sequence: Mapping[str, float]
    seconds: float

    @classmethod
    def from_scores(cls, index: int, scores: Any, seconds: float) -> "PointResult":
        """From a :class:`~vidprop.scoring.DavisScores`."""
        per_sequence: dict[str, list[float]] = {}
        for obj in scores.objects:
            per_sequence.setdefault(obj.sequence, []).append((obj.j_mean + obj.f_mean) / 2.0)
        means = {seq: math.fsum(v) / len(v) for seq, v in per_sequence.items()}
        return cls(index, float(scores.j_and_f_mean), float(scores.j_mean), float(scores.f_mean), means, float(seconds))


def save_result(folder: Path, point: GridPoint, data_signature: Mapping[str, Any], result: PointResult) -> Path:
    """Write ``folder/result.json`` atomically: the point is finished from then on."""
    record = {
        "fingerprint": point.fingerprint,
        "data": dict(data_signature),
        "j_and_f": result.j_and_f,
        "j_mean": result.j_mean,
        "f_mean": result.f_mean,
        "per_sequence": dict(result.per_sequence),
        "seconds": result.seconds,
    }
    path = Path(folder) / RESULT_FILE
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=2)
        fh.write("\n")
    return path


def load_result(folder: Path, point: GridPoint, data_signature: Mapping[str, Any]) -> PointResult | None:
    """The finished result of ``point`` in ``folder``, or None if absent, unreadable or made otherwise.

    A record made with other settings or on other data (another split, other sequences) is
    not used: the point is redone.
    """
    path = Path(folder) / RESULT_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("%s is unreadable (%s); redoing the point", path, exc)
        return None
    if record.get("fingerprint") != point.fingerprint or record.get("data") != json.loads(json.dumps(dict(data_signature))):
        logger.info("%s was made with other settings or data; redoing the point", path)
        return None
    try:
        return PointResult(
            point.index, float(record["j_and_f"]), float(record["j_mean"]), float(record["f_mean"]),
            {str(k): float(v) for k, v in record["per_sequence"].items()}, float(record["seconds"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        logger.warning("%s is incomplete (%s); redoing the point", path, exc)
        return None


def best_result(results: Mapping[int, PointResult]) -> PointResult | None:
    """The point with the highest J&F-Mean (the first in grid order on a tie; NaN never wins)."""
    finite = [r for r in results.values() if not math.isnan(r.j_and_f)]
    if not finite:
        return None
    return max(sorted(finite, key=lambda r: r.index), key=lambda r: r.j_and_f)


def _number(value: float, digits: int = 6) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def write_csv(path: Path, grid: Grid, results: Mapping[int, PointResult], sequences: Sequence[str]) -> Path:
    """``sweep.csv``: a row per finished point in grid order.

    Columns: each varied key (its dotted name), ``J&F-Mean``, ``J-Mean``, ``F-Mean`` (6 decimals),
    ``J&F <sequence>`` per sequence, ``seconds`` (1 decimal).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*grid.keys, "J&F-Mean", "J-Mean", "F-Mean", *(f"J&F {s}" for s in sequences), "seconds"])
    for point in grid.points:
        result = results.get(point.index)
        if result is None:
            continue
        writer.writerow([
            *(format_value(v) for v in point.values),
            _number(result.j_and_f), _number(result.j_mean), _number(result.f_mean),
            *(_number(result.per_sequence.get(s, math.nan)) for s in sequences),
            _number(result.seconds, 1),
        ])
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(buffer.getvalue())
    return path


def write_best(path: Path, grid: Grid, results: Mapping[int, PointResult], data_description: str) -> Path | None:
    """``best.yaml``: the winning point's complete config, usable with ``--config`` (None if nothing is scored)."""
    from vidprop.config import config_to_yaml

    best = best_result(results)
    if best is None:
        return None
    point = grid.points[best.index]
    setting = ", ".join(f"{key}={format_value(v)}" for key, v in zip(grid.keys, point.values))
    header = (
        f"# Best point of a vidprop sweep: J&F-Mean {best.j_and_f:.6f} (J {best.j_mean:.6f}, F {best.f_mean:.6f})\n"
        f"# with {setting}\n"
        f"# of {len(results)} scored of {len(grid.points)} grid points, on {data_description}.\n"
        f"# Use it as a preset: vidprop davis --config {path.name} ...\n"
    )
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(header + config_to_yaml(point.config))
    return path
