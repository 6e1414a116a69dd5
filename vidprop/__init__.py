"""vidprop: video object mask propagation with diffusion features (DIFT).

The public API, loaded lazily so that ``import vidprop`` loads no model, no torch and no decord:

- :func:`propagate_video` / :class:`VideoPipeline`: stream masks for a video (no files written);
- :class:`LabelPropagator`, :class:`PropagationConfig`: the ``reset``/``step``/``to_mask`` engine;
- :func:`create_extractor`, :func:`list_extractors`: feature backends (``dift_sd``, ``lab``);
- :func:`open_source`, :class:`DavisDataset`, :func:`read_mask`, :func:`write_mask`: data I/O;
- :func:`evaluate_davis`, :func:`evaluate_folders`: the DAVIS-2017 J&F scorer;
- :class:`VidpropConfig`, :func:`load_config`: configuration; and the errors of :mod:`vidprop.errors`.
"""

from __future__ import annotations

from vidprop.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "propagate_video": "vidprop.pipeline",
    "VideoPipeline": "vidprop.pipeline",
    "PropagatedFrame": "vidprop.pipeline",
    "run_davis": "vidprop.pipeline",
    "LabelPropagator": "vidprop.propagation",
    "PropagationConfig": "vidprop.propagation",
    "create_extractor": "vidprop.features",
    "list_extractors": "vidprop.features",
    "open_source": "vidprop.io",
    "DavisDataset": "vidprop.io",
    "read_mask": "vidprop.io",
    "write_mask": "vidprop.io",
    "evaluate_davis": "vidprop.scoring",
    "evaluate_folders": "vidprop.scoring",
    "DavisScores": "vidprop.scoring",
    "VidpropConfig": "vidprop.config",
    "load_config": "vidprop.config",
    "VidpropError": "vidprop.errors",
    "InputError": "vidprop.errors",
    "SourceError": "vidprop.errors",
    "MaskError": "vidprop.errors",
    "DavisLayoutError": "vidprop.errors",
    "ConfigError": "vidprop.errors",
    "ModelNotFoundError": "vidprop.errors",
    "ShapeError": "vidprop.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
