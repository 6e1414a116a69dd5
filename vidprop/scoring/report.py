"""Reports of :class:`~vidprop.scoring.evaluate.DavisScores`: the official CSVs and a readable table."""

from __future__ import annotations

import math
import os
from pathlib import Path

from vidprop.io.atomic import atomic_write
from vidprop.scoring.evaluate import GLOBAL_COLUMNS, DavisScores

__all__ = ["write_reports", "format_table", "global_csv_name", "per_sequence_csv_name", "PER_SEQUENCE_COLUMNS"]

PER_SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
"""Column names of the official ``per-sequence_results-<set>.csv`` (one row per object)."""


def global_csv_name(split: str) -> str:
    """``global_results-<split>.csv``, the official file name."""
    return f"global_results-{split}.csv"


def per_sequence_csv_name(split: str) -> str:
    """``per-sequence_results-<split>.csv``, the official file name."""
    return f"per-sequence_results-{split}.csv"


def _csv_number(value: float) -> str:
    # pandas.DataFrame.to_csv(float_format="%.3f"), as the official tool writes; NaN is empty there
    return "" if math.isnan(value) else "%.3f" % value


def _csv(rows: list[list[str]]) -> str:
    return "".join(",".join(row) + "\n" for row in rows)


def write_reports(scores: DavisScores, out_dir: str | os.PathLike, split: str = "val") -> tuple[Path, Path]:
    """Write the two official CSVs (values rounded to 3 decimals) into ``out_dir``, atomically.

    Existing files are replaced: results are always recomputed, never read back.

    Returns:
        (global_csv_path, per_sequence_csv_path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    global_rows = [list(GLOBAL_COLUMNS), [_csv_number(v) for v in scores.global_stats().values()]]
    seq_rows = [list(PER_SEQUENCE_COLUMNS)] + [[o.name, _csv_number(o.j_mean), _csv_number(o.f_mean)] for o in scores.objects]
    paths = (out / global_csv_name(split), out / per_sequence_csv_name(split))
    for path, rows in zip(paths, (global_rows, seq_rows)):
        with atomic_write(path, "w", newline="") as fh:
            fh.write(_csv(rows))
    return paths


def _table(header: list[str], rows: list[list[str]], names_first: bool = False) -> str:
    """Columns right-aligned (the first left-aligned if it holds names)."""
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [header] + rows
    return "\n".join(
        "  ".join(c.ljust(w) if names_first and i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in lines
    )


def format_table(scores: DavisScores, digits: int = 3) -> str:
    """A readable text table: the global statistics, then J&F, J and F of every object."""
    fmt = f"%.{digits}f"
    stats = scores.global_stats()
    glob = _table(list(stats), [[fmt % v for v in stats.values()]])
    rows = [[o.name, fmt % ((o.j_mean + o.f_mean) / 2), fmt % o.j_mean, fmt % o.f_mean] for o in scores.objects]
    per = _table(["Sequence", "J&F-Mean", "J-Mean", "F-Mean"], rows, names_first=True)
    n_seq, n_obj = len(scores.sequences), len(scores.objects)
    parts = [f"Global results ({n_obj} objects in {n_seq} sequences)", glob, "", "Per-object results", per]
    if scores.skipped_sequences:
        parts += ["", f"Skipped (no predictions): {', '.join(scores.skipped_sequences)}"]
    return "\n".join(parts) + "\n"
