"""Which transfer mode to use: the decision (`decision`: a results table in, a typed `Advice` out) and its text
(`text`: `advice_text` gives the three lines, the evidence and the details)."""

from .decision import (
    CURVE_CLASSIFIER,
    FINETUNE_SAMPLES_PER_CLASS,
    NOISE_SE,
    PAIRED_ALPHA,
    Advice,
    PairedScore,
    cheapest_within_noise,
    majority_flags,
    recommend,
)
from .text import AdviceText, advice_text

__all__ = [
    "Advice",
    "AdviceText",
    "CURVE_CLASSIFIER",
    "FINETUNE_SAMPLES_PER_CLASS",
    "NOISE_SE",
    "PAIRED_ALPHA",
    "PairedScore",
    "advice_text",
    "cheapest_within_noise",
    "majority_flags",
    "recommend",
]
