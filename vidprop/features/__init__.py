"""features stage: frames in, (C, h, w) feature grids and their stride out.

Backends (``list_extractors()``): ``dift_sd`` (Stable Diffusion DIFT, needs weights),
``dift_adm`` (guided-diffusion ADM DIFT, needs a local checkpoint) and ``lab`` (weight-free
CIE-Lab colour baseline). Build one with ``create_extractor``; wrap it
with ``cached_extractor`` to keep per-frame features on disk. Names load lazily: importing this
package (or ``vidprop.features.config``) loads neither torch nor model code.
"""

from vidprop.lazy import lazy_exports

_EXPORTS = {
    "FeatureExtractor": "base",
    "FeatureMap": "base",
    "create_extractor": "base",
    "list_extractors": "base",
    "register_extractor": "base",
    "FeatureCache": "cache",
    "CachedExtractor": "cache",
    "cached_extractor": "cache",
    "FeatureConfig": "config",
    "DiftConfig": "config",
    "AdmConfig": "config",
    "LabConfig": "config",
    "CacheConfig": "config",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
