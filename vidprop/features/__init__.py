"""features stage: frames in, (C, h, w) feature grids and their stride out.

- :mod:`~vidprop.features.base`: the interface (:class:`FeatureSpec`, :class:`FeatureMap`,
  :class:`FeatureExtractor`) and the backend registry (``list_extractors()``: ``dift_sd``,
  Stable Diffusion DIFT, needs weights; ``dift_adm``, guided-diffusion ADM DIFT, needs a local
  checkpoint; ``lab``, a weight-free CIE-Lab colour baseline);
- :mod:`~vidprop.features.stage`: :class:`FeatureStage`, what the pipeline uses: feature maps of
  frames through the on-disk cache (:mod:`~vidprop.features.cache`), the model built only on a
  cache miss; :class:`SharedFeatureStage`, several settings from one model pass (sweeps);
- :mod:`~vidprop.features.dift_sd`, :mod:`~vidprop.features.dift_adm`, :mod:`~vidprop.features.lab`:
  the backends (:mod:`~vidprop.features.unet_common`: what the diffusion backends share).

Names load lazily: importing this package (or ``vidprop.features.config``) loads neither torch
nor model code.
"""

from vidprop.lazy import lazy_exports

_EXPORTS = {
    "FeatureExtractor": "base",
    "FeatureMap": "base",
    "FeatureSpec": "base",
    "create_extractor": "base",
    "describe_extractor": "base",
    "list_extractors": "base",
    "register_extractor": "base",
    "FeatureStage": "stage",
    "SharedFeatureStage": "stage",
    "FeatureCache": "cache",
    "FeatureConfig": "config",
    "DiftConfig": "config",
    "AdmConfig": "config",
    "LabConfig": "config",
    "CacheConfig": "config",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
