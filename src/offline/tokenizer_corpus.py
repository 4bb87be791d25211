"""The texts the tiny checkpoints' tokenizer is trained on.

A byte-level BPE trained on a small corpus splits every word it never saw into letters
(docs/notes.md), so the corpus holds every fixed text the toolkit feeds a model: the embedding
instructions, the captioning prompts and the synthetic benchmark's sentences, plus some
FashionIQ- and CIRR-style English. Another domain's sentences (`EXTRA_CORPORA`) are added
only where asked for (src/offline/tiny.py), so the default tokenizer stays as it is.
"""

from __future__ import annotations

from collections.abc import Callable

from src.augment import prompts as augment_prompts
from src.model import prompts
from src.offline.garments import captions as garment_captions
from src.offline.synthetic import captions as synthetic_captions

# FashionIQ-style relative captions ("is longer and darker", ...) so that a tiny model
# also reads real FashionIQ text mostly as whole words.
FASHION_SENTENCES = (
    "is longer and darker and has short sleeves",
    "is shorter and lighter with long sleeves",
    "is sleeveless and has a floral print",
    "has a graphic print and is more colorful",
    "is a solid color with no pattern",
    "is striped, plaid or checkered instead of plain",
    "has a v-neck, a round neck or a collar",
    "is tighter, looser, more fitted or less fitted",
    "is more casual and less formal",
    "is more elegant, sexy and fancy",
    "is a dress, a shirt, a top, a tee or a blouse",
    "has buttons, a zipper, a pocket, a belt, lace and ruffles",
    "is made of denim, cotton, silk, leather or wool",
    "has a logo and text on the front",
    "is a mini, midi or maxi length skirt",
    "has spaghetti straps and an open back",
    "is strapless with a lower neckline",
    "has a hood and is a sweater or a jacket",
    "is the same but in another colour",
    "white, black, grey, gray, red, blue, navy, green, yellow, orange, pink, purple",
    "brown, beige, tan, gold, silver, teal, maroon, olive, cream, khaki",
    "The first one is darker; the second one is brighter.",
    "It is a T-shirt with cartoon animals and a funny slogan.",
    "Change the colour and make it slightly bigger.",
)
# CIRR-style captions: everyday scenes, people, animals, objects and spatial words.
EVERYDAY_SENTENCES = (
    "Show two dogs playing on the grass instead of one cat sitting on a sofa.",
    "Remove the people and add a car parked in front of the building.",
    "The same animal but lying down, facing the camera, with a toy in its mouth.",
    "Make it a close up of the food on a white plate on a wooden table.",
    "A man and a woman are standing next to a tree near the water at night.",
    "Have more birds flying in the blue sky above the mountains and the beach.",
    "Change the background to a city street with many windows, lights and signs.",
    "Put the bottle on the left side of the glass and the cup behind the box.",
    "A child holding a ball in a room with a bed, a chair and a door.",
    "Only one person, wearing glasses and a hat, looking at a phone or a book.",
    "Instead of a train, a bus and a truck drive along the road under a bridge.",
    "Zoom out so that the whole horse is visible, running across the field.",
    "Keep the monkey but make it smaller, sitting in the snow during the day.",
)


def corpus_texts() -> list[str]:
    """Every text the tiny tokenizer should read as whole words.

    The image markers of the embedding prompts are left out ("" instead of
    "<|image_pad|>" / "<image>"): they are special tokens added whole to the tokenizer,
    and their letters would otherwise count as corpus words.
    """
    sentences = list(synthetic_captions.corpus_sentences())
    texts = [prompts.candidate_text("")]
    for dataset in prompts.QUERY_INSTRUCTIONS:
        texts.extend(prompts.query_text("", dataset, sentence) for sentence in sentences)
    texts.extend(augment_prompts.corpus_texts())
    texts.extend(sentences)
    texts.extend(FASHION_SENTENCES)
    texts.extend(EVERYDAY_SENTENCES)
    return texts


EXTRA_CORPORA: dict[str, Callable[[], list[str]]] = {
    "garments": garment_captions.corpus_sentences,
}
"""Domain -> every sentence of its grammar, for `build_tiny_checkpoint(extra_texts=...)`."""
