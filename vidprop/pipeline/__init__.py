"""The product: frames -> features -> label propagation -> masks, for one video or many.

- :class:`VideoPipeline` holds the feature extractor (loaded once, reused across videos) and
  streams :class:`PropagatedFrame` s; :func:`propagate_video` is the one-call convenience.
- :func:`run_videos` writes PNGs resumably, sharded, with overlays; :func:`find_videos` maps a
  folder (of videos) and masks to jobs.
- :func:`run_davis` runs a DAVIS split and scores it; :func:`extract` fills the feature cache.
"""

from vidprop.pipeline.batch import (
    CONFIG_FILE,
    RunSummary,
    VideoJob,
    VideoOutcome,
    find_videos,
    is_finished,
    list_videos,
    resolve_runtime,
    run_videos,
    select_shard,
)
from vidprop.pipeline.davis import REFERENCE_CONTEXT_CAPS, DavisRun, davis_jobs, run_davis, score_davis
from vidprop.pipeline.fill_cache import extract
from vidprop.pipeline.inputs import ArrayFrameSource, as_frame_source, as_label_mask
from vidprop.pipeline.video import PropagatedFrame, VideoPipeline, propagate_video

__all__ = [
    "PropagatedFrame",
    "VideoPipeline",
    "propagate_video",
    "ArrayFrameSource",
    "as_frame_source",
    "as_label_mask",
    "VideoJob",
    "VideoOutcome",
    "RunSummary",
    "CONFIG_FILE",
    "list_videos",
    "find_videos",
    "select_shard",
    "is_finished",
    "run_videos",
    "DavisRun",
    "REFERENCE_CONTEXT_CAPS",
    "davis_jobs",
    "run_davis",
    "score_davis",
    "extract",
    "resolve_runtime",
]
