"""Concept discovery by factorising a layer's activations."""

from camlib.feature_factorization.deep_feature_factorization import (
    DeepFeatureFactorization,
    dff,
    run_dff_on_image,
)

__all__ = ["DeepFeatureFactorization", "dff", "run_dff_on_image"]
