"""The augmentation stage's options, resolved from the flags (which check themselves)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenerationOptions:
    """How the foundation model generates: prompt mode, length, sampling, pixel budget."""

    prompt_mode: str = "direct"
    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    max_pixels: int = 448 * 448


@dataclass(frozen=True)
class AugmentOptions:
    """Everything the augmentation stage of a round needs to know.

    `captioner` is resolved (never None): a foundation backbone, a dataset captioner such
    as the synthetic benchmark's scene oracle, or "none".
    """

    captioner: str
    model_path: str | None = None
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    pairs_per_query: int = 1
    negatives: str = "mined"
    max_pairs: int | None = None
    consistency_filter: bool = False
    verify: bool = False
    pool: str = "current"
    batch_size: int = 8
    flush_every: int = 32
    seed: int = 0

    def result_options(self) -> dict:
        """The options that change which samples come out (batch size and flushing do not)."""
        generation = self.generation
        return {
            "prompt_mode": generation.prompt_mode,
            "max_new_tokens": generation.max_new_tokens,
            "do_sample": generation.do_sample,
            "generation_temperature": generation.temperature,
            "top_p": generation.top_p,
            "foundation_max_pixels": generation.max_pixels,
            "augment_pairs_per_query": self.pairs_per_query,
            "augment_negatives": self.negatives,
            "max_augmented_per_iteration": self.max_pairs,
            "consistency_filter": self.consistency_filter,
            "verify_augmented": self.verify,
            "seed": self.seed,
        }
