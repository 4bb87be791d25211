"""Generation of new texts in batches, resumable from partial files, and the yes/no check.

While generating, each process flushes what it has to its own partial file every
`--augment_flush_every` pairs; a rerun whose meta matches reads every process's partial
file and generates only the rest, so a kill costs at most one flush interval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from src.artifacts import PartialGenerations
from src.augment.captioners import Captioner
from src.augment.filters import Kept
from src.augment.pairs import CaptionPair
from src.distributed import is_main, merge_dicts, rank, world_size
from src.errors import IntegrityError
from src.faults import fault_point
from src.records import Generation

logger = logging.getLogger("augment")


def read_partials(paths: list[Path], meta: dict) -> dict[str, Generation]:
    """Texts already generated with this meta, from the partial files `paths`.

    A partial file that is damaged or was written with other settings is not reused.
    """
    generations = {}
    for path in paths:
        try:
            partial = PartialGenerations.read(path)
        except IntegrityError as error:
            logger.warning("not reusing a partial file: %s", error)
            continue
        if partial.meta != meta:
            logger.info("%s was written with other settings; not reused", path.name)
            continue
        generations.update(partial.generations)
    return generations


def generate_texts(
    captioner: Captioner,
    pairs: list[CaptionPair],
    batch_size: int,
    flush_every: int,
    flush: Callable[[dict[str, Generation]], None],
) -> dict[str, Generation]:
    """Generate a text for each pair in batches, calling `flush(generated so far)` every
    `flush_every` pairs and at the end; returns {pairid: Generation}."""
    generated, unflushed = {}, 0
    bar = tqdm(total=len(pairs), desc="captioning", unit="sample", disable=not is_main())
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        for pair, generation in zip(batch, captioner.generate(batch), strict=True):
            generated[pair.pairid] = generation
        bar.update(len(batch))
        unflushed += len(batch)
        if unflushed >= flush_every:
            flush(generated)
            unflushed = 0
            fault_point("augmentation", len(generated))
    bar.close()
    if unflushed:
        flush(generated)
    return generated


def ask_consistency(
    captioner: Captioner, kept: Kept, batch_size: int
) -> dict[str, tuple[float, float]]:
    """{pairid: (P(yes) for the new text, P(yes) for the original text)}, sharded over the
    processes; both questions of a batch go through one forward pass."""
    share = kept[rank() :: world_size()]
    answers = {}
    bar = tqdm(total=len(share), desc="consistency check", unit="sample", disable=not is_main())
    for start in range(0, len(share), batch_size):
        batch = share[start : start + batch_size]
        pairs = [pair for pair, _ in batch]
        texts = [text for _, text in batch] + [pair.original_caption for pair in pairs]
        probabilities = captioner.yes_probabilities(pairs + pairs, texts)
        for i, pair in enumerate(pairs):
            answers[pair.pairid] = (probabilities[i], probabilities[len(pairs) + i])
        bar.update(len(batch))
    bar.close()
    return merge_dicts(answers)
