"""Configuration of the scoring stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vidprop.config_base import check, option

__all__ = ["ScoringConfig", "ON_MISSING_CHOICES"]

ON_MISSING_CHOICES = ("error", "skip")


@dataclass(frozen=True)
class ScoringConfig:
    """How predictions are scored (DAVIS-2017 J&F).

    The defaults reproduce the official DAVIS-2017 semi-supervised evaluation.
    """

    ignore_void: bool = option(
        False,
        help="generic folders only: leave ground-truth void (255) pixels out of J and F instead of counting them "
        "as background (DAVIS parity mode always counts them as background, as the official tool does)",
    )
    processes: Optional[int] = option(None, help="worker processes for scoring (None = one per CPU core, 1 = no pool)")
    on_missing_sequence: str = option(
        "error", help="a sequence without a prediction folder: 'error' (default) or 'skip' it with a warning"
    )
    skip_first_last: bool = option(
        True,
        help="generic folders only: do not score the first and the last frame, nor the frame where an object first "
        "appears in the ground truth (its given frame; DAVIS semi-supervised protocol)",
    )
    binary: bool = option(
        False,
        help="generic folders only: binary masks (DAVIS-2016 style, 0/255 or 0/1), every non-zero pixel (255 included) "
        "is the one object; otherwise 255 is void",
    )

    def __post_init__(self):
        check(not (self.binary and self.ignore_void), "binary", self.binary, "false when ignore_void is true (binary masks have no void)")
        check(self.processes is None or self.processes >= 1, "processes", self.processes, "None or an integer >= 1")
        check(
            self.on_missing_sequence in ON_MISSING_CHOICES,
            "on_missing_sequence",
            self.on_missing_sequence,
            " or ".join(repr(c) for c in ON_MISSING_CHOICES),
        )
