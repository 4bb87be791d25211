"""The captioning and consistency prompts, versioned as one unit.

Change any text here and bump PROMPT_VERSION: the version goes into the meta of every
augmented_samples file, so a resumed run can tell texts written by another prompt.
Every fixed text is listed in `corpus_texts()`, which the tiny models' tokenizer is
trained on (src/model/tokenizer_corpus.py).
"""

from __future__ import annotations

PROMPT_VERSION = "caption-v2"

PROMPT_MODES = ("direct", "cot")

# The marker that ends the reasoning of the `cot` mode; the parser keeps what follows it.
FINAL_MARKER = "Final text:"

TWO_IMAGES_INTRO = (
    "The first image is the reference image and the second image is the target image."
)
SIDE_BY_SIDE_INTRO = (
    "The picture shows two images side by side, split by a vertical bar: the left image is "
    "the reference image and the right image is the target image."
)

TASK = (
    "A modification text says how to change a reference image into a target image, for "
    'example: "{original}". Write a new modification text, in the same style and about the '
    "same length, that changes the reference image into the target image shown here. Do not "
    "mention the words first, second, left, right image."
)
DIRECT_INSTRUCTION = "Answer with the new modification text only."
COT_INSTRUCTION = (
    "First say briefly what differs between the two images. Then write the new "
    f'modification text on its own line, after "{FINAL_MARKER}".'
)

QUESTION = (
    'Does the text "{text}" describe the change from the reference image to the target '
    "image? Answer yes or no."
)

# The answers whose first-token probabilities the consistency check reads.
YES_ANSWERS = ("yes", "Yes", "YES")
NO_ANSWERS = ("no", "No", "NO")


def caption_prompt(original: str, mode: str, side_by_side: bool) -> str:
    """The user text of a captioning request (the images are attached separately)."""
    if mode not in PROMPT_MODES:
        raise ValueError(f"unknown --prompt_mode {mode!r}; choose one of {PROMPT_MODES}")
    intro = SIDE_BY_SIDE_INTRO if side_by_side else TWO_IMAGES_INTRO
    instruction = DIRECT_INSTRUCTION if mode == "direct" else COT_INSTRUCTION
    return f"{intro} {TASK.format(original=original)} {instruction}"


def consistency_question(text: str, side_by_side: bool) -> str:
    """A yes/no question: does `text` turn the reference into the target?"""
    intro = SIDE_BY_SIDE_INTRO if side_by_side else TWO_IMAGES_INTRO
    return f"{intro} {QUESTION.format(text=text)}"


def corpus_texts() -> list[str]:
    """Every fixed text of this module, for training the tiny models' tokenizer."""
    return [
        TWO_IMAGES_INTRO,
        SIDE_BY_SIDE_INTRO,
        TASK,
        DIRECT_INSTRUCTION,
        COT_INSTRUCTION,
        QUESTION,
        FINAL_MARKER,
        *YES_ANSWERS,
        *NO_ANSWERS,
    ]
