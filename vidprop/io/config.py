"""Config of the data stage."""

from __future__ import annotations

from dataclasses import dataclass

from vidprop.config_base import check, option
from vidprop.io.resize import ResizePolicy
from vidprop.io.video.readers import BACKEND_CHOICES

__all__ = ["DataConfig"]


@dataclass(frozen=True)
class DataConfig:
    """How frames become model input. Defaults are DIFT's DAVIS setting."""

    short_side: int = option(480, help="shorter frame side after resizing, in pixels (a multiple of `multiple`)")
    multiple: int = option(32, help="the longer side is floored to a multiple of this many pixels")
    prefetch: int = option(8, help="frames decoded and resized ahead in a background thread (0 = no thread)")
    video_backend: str = option("auto", help="video-file reader: auto (= pyav), pyav, decord or opencv; all give the same displayed RGB frames")

    def __post_init__(self):
        self.resize_policy()  # validates short_side and multiple
        check(isinstance(self.prefetch, int) and self.prefetch >= 0, "prefetch", self.prefetch, "an integer >= 0")
        check(self.video_backend in BACKEND_CHOICES, "video_backend", self.video_backend, " | ".join(BACKEND_CHOICES))

    def resize_policy(self) -> ResizePolicy:
        """The :class:`ResizePolicy` of this config."""
        return ResizePolicy(short_side=self.short_side, multiple=self.multiple)
