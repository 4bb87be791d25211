"""Write a trained round out of the experiment: as a standalone model with its model card
(`--export`), or a gallery's embeddings as an index to hand over (`--export_index`).

Both write into a new or empty folder only (a non-empty one is refused before any work)
and through a temporary sibling folder renamed into place at the end, so a failed export
leaves nothing behind but that folder's name free.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from src.errors import ArgumentError
from src.experiment.stage_log import now
from src.model.export import export_embedder
from src.retrieval.retriever import Gallery
from src.use.model_card import model_card
from src.use.trained_round import GallerySource, TrainedRound

MODEL_CARD_NAME = "README.md"
INDEX_EMBEDDINGS_NAME = "embeddings.npy"
INDEX_NAMES_NAME = "names.json"
INDEX_SETTINGS_NAME = "settings.json"


def check_new_folder(flag_name: str, path: str | Path) -> Path:
    """`path`, refused in one line unless it is new or an empty folder."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ArgumentError(
            f"{flag_name} {path}: not an empty folder; give a new or empty one (nothing is overwritten)"
        )
    return path


@contextmanager
def written_into(folder: Path) -> Iterator[Path]:
    """A temporary sibling of `folder` to write into; it becomes `folder` when the block
    ends without an error, and is removed when it does not."""
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if folder.exists():
        folder.rmdir()  # empty (check_new_folder)
    partial.rename(folder)


def provenance(trained: TrainedRound) -> dict:
    return {
        "experiment": str(trained.experiment.dir),
        "round": trained.iteration,
        "checkpoint": str(trained.checkpoint.path),
        "checkpoint_fingerprint": trained.checkpoint.fingerprint,
        "time": now(),
    }


def export_round(trained: TrainedRound, folder: str | Path, dtype: str = "float32") -> Path:
    """Round `trained` as a standalone model in `folder` (src/model/export.py) with its
    model card (src/use/model_card.py)."""
    folder = check_new_folder("--export", folder)
    prompts = trained.prompts()
    with written_into(folder) as partial:
        export_embedder(trained.checkpoint.path, partial, prompts, dtype, provenance(trained))
        card = model_card(trained, folder.resolve(), prompts, dtype)
        (partial / MODEL_CARD_NAME).write_text(card)
    return folder


def index_readme(settings: dict) -> str:
    return f"""# Gallery index: {settings['count']} images

Embeddings of {settings['gallery']} made with round {settings['round']} of
`{settings['experiment']}` ({settings['dim']} dimensions, float32; score: {settings['score']}).
Row i of `{INDEX_EMBEDDINGS_NAME}` is image i of
`{INDEX_NAMES_NAME}`; `{INDEX_SETTINGS_NAME}` holds the model, prompts and pixel budget they
were made with. Encode queries with the same round (`--export` writes it as a model), then:

```python
import json
import numpy as np

embeddings = np.load("{INDEX_EMBEDDINGS_NAME}")
names = json.load(open("{INDEX_NAMES_NAME}"))
scores = query_embeddings @ embeddings.T           # (queries, images)
top = np.argsort(-scores, axis=1, kind="stable")[:, :10]

import faiss                                        # or, for large galleries
index = faiss.IndexFlatIP(embeddings.shape[1])
index.add(embeddings)
scores, top = index.search(query_embeddings, 10)
```
"""


def export_index(
    trained: TrainedRound, gallery: Gallery, source: GallerySource, folder: str | Path
) -> Path:
    """The gallery's embeddings, image names and the settings they were made with."""
    folder = check_new_folder("--export_index", folder)
    config = trained.embedder_config()
    settings = {
        **provenance(trained),
        "gallery": source.description,
        "count": len(gallery.names),
        "dim": int(gallery.embeddings.shape[1]),
        "dtype": "float32",
        "score": "inner product (the embeddings are L2-normalised: cosine similarity)"
        if config.normalize
        else "inner product",
        "embedder": asdict(config),
        "prompts": trained.prompts().to_json(),
    }
    with written_into(folder) as partial:
        np.save(partial / INDEX_EMBEDDINGS_NAME, np.ascontiguousarray(gallery.embeddings, dtype=np.float32))
        (partial / INDEX_NAMES_NAME).write_text(json.dumps(gallery.names, indent=1))
        (partial / INDEX_SETTINGS_NAME).write_text(json.dumps(settings, indent=2))
        (partial / MODEL_CARD_NAME).write_text(index_readme(settings))
    return folder
