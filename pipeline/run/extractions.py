"""Extraction planning: every backbone x pooling of a config with its feature keys, known before any work.

The one place a run builds a `FeatureExtractor`: a plan saved in the store
by an earlier run with the same settings gives the keys without building the
backbone (no Keras import when everything is cached); otherwise the
extractor is built, Keras imported quietly first.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.errors import ConfigError, LayerprobeError
from ...features.extract import FeatureExtractor
from ...features.plans import ExtractionPlan, load_plan, plan_signature, save_plan
from ..config import BackboneConfig, ExperimentConfig

__all__ = ["Extraction", "extractor_settings", "plan_extractions"]

@dataclass
class Extraction:
    """One backbone x pooling: the extractor's arguments, its plan, and the extractor once built."""

    backbone: BackboneConfig
    settings: dict
    plan: ExtractionPlan
    extractor: FeatureExtractor | None = None

    def build(self) -> FeatureExtractor:
        """The extractor, built on first call."""
        if self.extractor is None:
            self.extractor = FeatureExtractor.from_config(self.settings)
        return self.extractor

    def get_config(self) -> dict:
        """The extractor's `FeatureExtractor.get_config()`, without building it when it is not built yet.

        Unbuilt, that is `FeatureExtractor.config_of(**settings)`.
        """
        if self.extractor is not None:
            return self.extractor.get_config()
        return FeatureExtractor.config_of(**self.settings)


def extractor_settings(config: ExperimentConfig, backbone: BackboneConfig, pooling: str) -> dict:
    """The `FeatureExtractor` arguments of one backbone x pooling, JSON-ready."""
    return {
        "model": backbone.model,
        "weights": backbone.weights,
        "layers": list(backbone.layers),
        "pooling": pooling,
        "input_size": config.features.input_size,
        "batch_size": config.features.batch_size,
        "dtype": config.features.dtype,
        "mixed_precision": config.features.mixed_precision,
        "decoder": config.features.decoder,
        # only when on: the plans of runs without it keep their signatures
        **({"pixel_cache": True} if config.features.pixel_cache else {}),
        "model_kwargs": dict(backbone.model_kwargs),
        "seed": backbone.seed,
        # only when set: a model file's preprocessing (registry families have theirs)
        **({"preprocessing": backbone.preprocessing} if backbone.preprocessing is not None else {}),
    }


def plan_extractions(config: ExperimentConfig) -> list[Extraction]:
    """Every backbone x pooling with its feature keys; plans computed here are saved to the store.

    Raises:
        ConfigError: Listing every backbone that cannot be built as configured
            (unknown layer, weights file that does not fit, unknown model_kwargs).
    """
    extractions, built, problems = [], [], []
    for number, backbone in enumerate(config.backbones, start=1):
        for pooling in config.features.pooling:
            settings = extractor_settings(config, backbone, pooling)
            signature = plan_signature(settings)
            plan, extractor = load_plan(config.features.store, signature), None
            if plan is None:
                try:
                    extractor = FeatureExtractor.from_config(settings)
                # FeatureExtractor raises ValueError (BackboneError and its kin) for arguments it cannot
                # use: here they are the config's, so they are reported as config problems.
                except (LayerprobeError, ValueError) as error:
                    problems.append(f"[[backbones]] #{number} ({backbone.model}): {error}")
                    break  # the other poolings would fail the same way
                plan = extractor.plan()
                built.append((signature, plan))
            extractions.append(Extraction(backbone, settings, plan, extractor))
    if problems:
        raise ConfigError(problems, config.source)
    for signature, plan in built:
        save_plan(config.features.store, signature, plan)
    return extractions
