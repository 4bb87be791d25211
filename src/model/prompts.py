"""Embedding instructions in the VLM2Vec / MMEB format.

The released VLM2Vec checkpoints were trained on MMEB, whose composed-retrieval
instructions are "<|image_1|>\\nGiven an image, find a similar everyday image with the
described changes: {text}\\n" (CIRR) and "<|image_1|>\\nFind an image to match the fashion
image and style note: {text}\\n" (FashionIQ), with "<|image_1|>\\nRepresent the given
image.\\n" for every candidate image. VLM2Vec replaces the MMEB image marker by the
backbone's own image token (TIGER-AI-Lab/VLM2Vec, src/model/processor.py:
`VLM_IMAGE_TOKENS` and `process_input_text`): "<|image_pad|>" for Qwen2-VL and
Qwen2.5-VL, "<image>" for LLaVA-NeXT; the processor then expands that token to the
image's patch tokens. No chat template is applied.

`text_only_query_text` is the same query without its image (no image token), for the
evaluation's text-only ranking (src/retrieval/metrics.py: `modality_metrics`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

QUERY_INSTRUCTIONS = {
    "cirr": "Given an image, find a similar everyday image with the described changes:",
    "fashioniq": "Find an image to match the fashion image and style note:",
}
CANDIDATE_INSTRUCTION = "Represent the given image."


def query_text(image_token: str, dataset: str, caption: str) -> str:
    """The text of a composed query: image marker, instruction, modification text."""
    return f"{image_token}\n{QUERY_INSTRUCTIONS[dataset]} {caption}\n"


def text_only_query_text(dataset: str, caption: str) -> str:
    """A composed query's text without its image: instruction and modification text only
    (the evaluation's text-only ranking)."""
    return f"{QUERY_INSTRUCTIONS[dataset]} {caption}\n"


def candidate_text(image_token: str) -> str:
    """The text that goes with every candidate (gallery) image."""
    return f"{image_token}\n{CANDIDATE_INSTRUCTION}\n"


TEXT_FIELD = "{text}"


@dataclass(frozen=True)
class EmbedderPrompts:
    """The two prompts an embedder was trained with, as templates: `query` holds the image
    token and `{text}` (the modification text), `candidate` goes with every gallery image.
    An exported model records them in its embedder_config.json (`to_json`), so it is used
    with the prompts it was trained with, without the experiment."""

    query: str
    candidate: str
    instruction_set: str

    @classmethod
    def of(cls, image_token: str, instruction_set: str) -> EmbedderPrompts:
        """The prompts of `instruction_set` ("cirr" or "fashioniq") for a backbone's image token."""
        return cls(
            query_text(image_token, instruction_set, TEXT_FIELD),
            candidate_text(image_token),
            instruction_set,
        )

    def query_for(self, text: str) -> str:
        """The prompt of one composed query."""
        return self.query.replace(TEXT_FIELD, text)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> EmbedderPrompts:
        return cls(data["query"], data["candidate"], data["instruction_set"])
