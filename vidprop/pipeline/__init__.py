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

Names load lazily: importing this package (or :mod:`~vidprop.pipeline.jobs`) loads no torch, so
a Ray driver that only plans and dispatches videos never pays for it.
"""

from vidprop.lazy import lazy_exports

_EXPORTS = {
    "PropagatedFrame": "stream",
    "MaskPropagation": "stream",
    "VideoPipeline": "stream",
    "propagate_video": "stream",
    "VideoInput": "inputs",
    "open_video": "inputs",
    "ArrayFrameSource": "inputs",
    "as_frame_source": "inputs",
    "as_label_mask": "inputs",
    "Keyframe": "keyframes",
    "Keyframes": "keyframes",
    "KeyframePropagation": "keyframes",
    "as_keyframes": "keyframes",
    "VideoJob": "jobs",
    "VideoOutcome": "jobs",
    "RunSummary": "jobs",
    "CONFIG_FILE": "jobs",
    "list_videos": "jobs",
    "find_videos": "jobs",
    "select_shard": "jobs",
    "resolve_runtime": "jobs",
    "is_finished": "jobs",
    "completion_record": "jobs",
    "job_inputs": "jobs",
    "open_job": "jobs",
    "run_job": "jobs",
    "extract_job": "jobs",
    "JobWorker": "jobs",
    "MaskWriter": "jobs",
    "FeatureFiller": "jobs",
    "run_jobs": "jobs",
    "run_videos": "jobs",
    "DavisRun": "davis",
    "REFERENCE_CONTEXT_CAPS": "davis",
    "davis_jobs": "davis",
    "run_davis": "davis",
    "score_davis": "davis",
    "extract": "extract",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
