"""features stage: frames in, (C, h, w) feature grids and their stride out.

Backends (``list_extractors()``): ``dift_sd`` (Stable Diffusion DIFT, needs weights),
``dift_adm`` (guided-diffusion ADM DIFT, needs a local checkpoint) and ``lab`` (weight-free
CIE-Lab colour baseline). Build one with ``create_extractor``; wrap it
with ``cached_extractor`` to keep per-frame features on disk. Importing this package loads
no model code.
"""

from vidprop.features.base import (
    FeatureExtractor,
    FeatureMap,
    create_extractor,
    list_extractors,
    register_extractor,
)
from vidprop.features.cache import CachedExtractor, FeatureCache, cached_extractor
from vidprop.features.config import AdmConfig, CacheConfig, DiftConfig, FeatureConfig, LabConfig

__all__ = [
    "FeatureExtractor",
    "FeatureMap",
    "create_extractor",
    "list_extractors",
    "register_extractor",
    "FeatureCache",
    "CachedExtractor",
    "cached_extractor",
    "FeatureConfig",
    "DiftConfig",
    "AdmConfig",
    "LabConfig",
    "CacheConfig",
]
