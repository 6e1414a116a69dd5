"""Propagation stage: top-k affinity label propagation (DINO/DIFT semantics) in bounded memory.

``LabelPropagator(PropagationConfig(...))``: ``reset(first_features, first_labels)``, then
``step(features) -> soft labels`` per frame and ``to_mask(soft, stride, size)``.
``vidprop.propagation.dense`` holds the dense reference used by the tests and benchmarks.
"""

from vidprop.propagation.config import PropagationConfig
from vidprop.propagation.engine import LabelPropagator, labels_to_mask

__all__ = ["LabelPropagator", "PropagationConfig", "labels_to_mask"]
