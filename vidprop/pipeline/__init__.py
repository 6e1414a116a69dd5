"""The product: frames -> features -> label propagation -> masks, for one video or many.

- :mod:`~vidprop.pipeline.inputs`: :func:`open_video`, where a video's frames and masks are
  opened and checked, once;
- :mod:`~vidprop.pipeline.keyframes`: masks on any frames (:class:`Keyframes`,
  :func:`as_keyframes`), objects that enter later, the backward pass before the first mask;
- :mod:`~vidprop.pipeline.stream`, the streaming core for one video in memory:
  :class:`VideoPipeline` (holds the feature stage across videos; ``propagate``,
  ``frames_with_features`` for one pass over a video's features), :class:`MaskPropagation` (a
  video's masks through those features in one forward pass), :func:`propagate_video`;
- :mod:`~vidprop.pipeline.jobs`, the job runner for videos on disk: :func:`run_job` runs one video
  end to end (read, propagate, write the masks, mark complete), :func:`run_jobs` runs a shard of
  jobs on the execution engine (:mod:`vidprop.engines`: here, or on Ray) with failure isolation;
  :func:`find_videos` + :func:`run_videos` is the folder runner;
- :mod:`~vidprop.pipeline.davis`: :func:`run_davis` runs and scores a DAVIS split;
- :mod:`~vidprop.pipeline.extract`: :func:`extract` fills the feature cache.
"""

from vidprop.pipeline.davis import REFERENCE_CONTEXT_CAPS, DavisRun, davis_jobs, run_davis, score_davis
from vidprop.pipeline.extract import extract
from vidprop.pipeline.inputs import ArrayFrameSource, VideoInput, as_frame_source, as_label_mask, open_video
from vidprop.pipeline.keyframes import Keyframe, KeyframePropagation, Keyframes, as_keyframes
from vidprop.pipeline.jobs import (
    CONFIG_FILE,
    FeatureFiller,
    JobWorker,
    MaskWriter,
    RunSummary,
    VideoJob,
    VideoOutcome,
    completion_record,
    extract_job,
    find_videos,
    is_finished,
    job_inputs,
    list_videos,
    open_job,
    resolve_runtime,
    run_job,
    run_jobs,
    run_videos,
    select_shard,
)
from vidprop.pipeline.stream import MaskPropagation, PropagatedFrame, VideoPipeline, propagate_video

__all__ = [
    "PropagatedFrame",
    "MaskPropagation",
    "VideoPipeline",
    "propagate_video",
    "VideoInput",
    "open_video",
    "ArrayFrameSource",
    "as_frame_source",
    "as_label_mask",
    "Keyframe",
    "Keyframes",
    "KeyframePropagation",
    "as_keyframes",
    "VideoJob",
    "VideoOutcome",
    "RunSummary",
    "CONFIG_FILE",
    "list_videos",
    "find_videos",
    "select_shard",
    "resolve_runtime",
    "is_finished",
    "completion_record",
    "job_inputs",
    "open_job",
    "run_job",
    "extract_job",
    "JobWorker",
    "MaskWriter",
    "FeatureFiller",
    "run_jobs",
    "run_videos",
    "DavisRun",
    "REFERENCE_CONTEXT_CAPS",
    "davis_jobs",
    "run_davis",
    "score_davis",
    "extract",
]
