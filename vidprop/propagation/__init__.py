"""Propagation stage: top-k affinity label propagation (DINO/DIFT semantics) in bounded memory.

``LabelPropagator(PropagationConfig(...))``: ``reset(first_features, first_labels)``, then
``step(features) -> soft labels`` per frame and ``to_mask(soft, stride, size)``.
``vidprop.propagation.dense`` holds the dense reference used by the tests and benchmarks.
Names load lazily: ``vidprop.propagation.config`` imports without torch.
"""

from vidprop.lazy import lazy_exports

_EXPORTS = {
    "PropagationConfig": "config",
    "LabelPropagator": "engine",
    "SharedCandidates": "engine",
    "labels_to_mask": "engine",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
