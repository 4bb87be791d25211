"""The model card (README.md) of an exported round, as Hugging Face reads one.

YAML front matter (huggingface_hub's `ModelCardData`): the base model, the dataset,
library and tags, and `model-index` with the round's validation metrics. The body: what
the model is, how to use it in a few lines (plain transformers; this project), the
embedder's settings and prompts, the round's metrics, every round up to it and what each
did (from stages.jsonl), the result-changing flags that differ from the defaults, and
where it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData

from src.arguments import parse_arguments
from src.experiment.config import config_differences
from src.experiment.stage_log import now
from src.model.encoder import EmbedderConfig
from src.model.prompts import EmbedderPrompts
from src.model.registry import get_backbone
from src.records import (
    AugmentSkippedSummary,
    AugmentSummary,
    MineSummary,
    TrainSkipped,
    TrainSummary,
)
from src.use.trained_round import TrainedRound

DATASET_TITLES = {"cirr": "CIRR", "fashioniq": "FashionIQ"}
HEADLINE_METRICS = ("recall@1", "recall@5", "avg", "average_recall@10", "average_recall@50", "average")
METRIC_NOTES = {
    "cirr": "Recall@k ranks the whole validation gallery with the reference image left out; the "
    "subset recalls rank the query's image group; `avg` is (Recall@5 + Recall_subset@1) / 2.",
    "fashioniq": "Recall@10 and @50 rank each category's gallery; `average` is their mean over "
    "the categories, averaged.",
}
TASK = ("composed-image-retrieval", "Composed image retrieval")


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(cell).replace("|", "\\|").replace("\n", " ") for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value: object, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def usage(export_dir: Path, prompts: EmbedderPrompts) -> str:
    """How to use the exported folder: plain transformers, then this project."""
    query = prompts.query_for("make the shapes red")
    return f'''With plain transformers (the embedding is the last token's hidden state, L2-normalised):

```python
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model_dir = {str(export_dir)!r}
model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
processor = AutoProcessor.from_pretrained(model_dir)

def embed(texts, images):
    inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.model(**inputs, use_cache=False).last_hidden_state
    mask = inputs["attention_mask"]
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # each row's last token (any padding side)
    return F.normalize(hidden[torch.arange(len(texts)), last].float(), dim=-1)

query = embed([{query!r}], [Image.open("reference.png").convert("RGB")])
gallery_files = ["gallery_1.png", "gallery_2.png"]
gallery = embed([{prompts.candidate!r}] * len(gallery_files),
                [Image.open(f).convert("RGB") for f in gallery_files])
scores = query @ gallery.T  # cosine similarities: the higher, the better the match
```

With this project (the same embeddings, the prompts read from `embedder_config.json`):

```python
from src.retrieval.retriever import Retriever

retriever = Retriever.from_checkpoint({str(export_dir)!r})
gallery = retriever.gallery(["gallery_1.png", "gallery_2.png"])
print(retriever.query("reference.png", "make the shapes red", gallery, k=2))
```'''


def settings_section(config: EmbedderConfig, prompts: EmbedderPrompts, dtype: str) -> str:
    backbone = get_backbone(config.backbone)
    rows = [
        ["backbone", f"{config.backbone} (`{backbone.model_class_name}`)"],
        ["pooling", f"{config.pooling} token, {'L2-normalised' if config.normalize else 'not normalised'}"],
        ["pixel budget", f"{config.min_pixels} .. {config.max_pixels} pixels per image"],
        ["attention", config.attn_implementation],
        ["weights", f"{dtype}" + (" (LoRA merged in float32, then cast)" if config.lora else "")],
        ["query prompt", f"`{prompts.query!r}`"],
        ["candidate prompt", f"`{prompts.candidate!r}`"],
    ]
    return _table(["setting", "value"], rows)


def rounds_section(trained: TrainedRound) -> str:
    """Every round up to the exported one and what it did (from stages.jsonl)."""
    done = trained.experiment.log.latest()
    rows = []
    for r in range(trained.iteration + 1):
        train = done.get(("train", r))
        if isinstance(train, TrainSummary):
            trained_on = f"{train.num_samples} triplets, {train.steps} steps, loss {_number(train.train_loss, 3)}"
        elif isinstance(train, TrainSkipped):
            trained_on = f"{train.num_samples} triplets, - steps, loss -"
        else:
            trained_on = "-"
        mined = done.get(("mine", r - 1)) if r else None
        negatives = (
            f"{mined.stats.num_negatives} for {mined.stats.num_mined} queries, mined with round {r - 1}"
            if isinstance(mined, MineSummary)
            else "-"
        )
        augment = done.get(("augment", r)) if r else None
        if isinstance(augment, AugmentSummary):
            texts = f"{augment.kept} kept of {augment.pairs} pairs ({augment.generator})"
        elif isinstance(augment, AugmentSkippedSummary):
            texts = f"{augment.kept} kept of 0 pairs ({augment.generator})"
        else:
            texts = "-"
        metrics = done.get(("evaluate", r))
        metrics = metrics if isinstance(metrics, dict) else {}
        validation = ", ".join(
            f"{name} {_number(metrics[name])}" for name in HEADLINE_METRICS if name in metrics
        )
        rows.append([r, trained_on, negatives, texts, validation or "-"])
    header = ["round", "trained on", "hard negatives", "new texts", "validation"]
    return _table(header, rows)


def flags_section(arguments: dict) -> str:
    """The result-changing flags of the run that differ from a run with no flags."""
    defaults = parse_arguments([]).as_dict()
    rows = [
        [f"`--{key}`", f"`{json.dumps(value)}`", f"`{json.dumps(default)}`"]
        for key, value, default in config_differences(arguments, defaults)
    ]
    if not rows:
        return "Every result-changing flag at its default."
    return _table(["flag", "this run", "default"], rows)


def model_index(trained: TrainedRound, metrics: dict[str, float], model_name: str) -> list[EvalResult]:
    dataset = trained.dataset_name
    title = DATASET_TITLES.get(dataset, dataset)
    return [
        EvalResult(
            task_type=TASK[0],
            task_name=TASK[1],
            dataset_type=dataset,
            dataset_name=f"{title} at {trained.flags.data.dataset_path}",
            dataset_split="validation",
            metric_type=name,
            metric_name=name,
            metric_value=round(float(value), 4),
        )
        for name, value in metrics.items()
    ]


def model_card(trained: TrainedRound, export_dir: Path, prompts: EmbedderPrompts, dtype: str) -> str:
    """The README.md of an exported round (see the module docstring)."""
    experiment, i, config = trained.experiment, trained.iteration, trained.embedder_config()
    name = f"{experiment.dir.name}, round {i}"
    evaluation = trained.evaluation()
    metrics = (evaluation.metrics or {}) if evaluation else {}
    data = ModelCardData(
        model_name=name,
        base_model=Path(config.base_model).name,
        datasets=[trained.dataset_name],
        library_name="transformers",
        tags=[TASK[0], "vlm2vec", "embeddings", config.backbone],
        eval_results=model_index(trained, metrics, name) or None,
    )
    title = DATASET_TITLES.get(trained.dataset_name, trained.dataset_name)
    evaluation_text = (
        _table(["metric", "value"], [[k, _number(v)] for k, v in metrics.items()])
        if metrics
        else "This round was not evaluated."
    )
    versions = trained.record.versions
    body = f"""# {name}

An embedder for composed image retrieval (a reference image and a modification text find
the target image), VLM2Vec-style: {config.backbone}, the last token's hidden state,
L2-normalised. Round {i} of the iterative experiment `{experiment.dir}`, trained on
{title} (`{trained.flags.data.dataset_path}`) from `{config.base_model}`.

## Use it

{usage(export_dir, prompts)}

## Embedder settings (`embedder_config.json`)

{settings_section(config, prompts, dtype)}

## Evaluation: {title} validation, percent

{evaluation_text}

{METRIC_NOTES.get(trained.dataset_name, "")}

## Training

Every round up to this one (round 0 trains on the original triplets; round i mines hard
negatives with round i - 1, writes new texts for them and trains on both):

{rounds_section(trained)}

Flags that change results, where this run differs from the defaults (every flag:
`experiment_config.json` in the experiment):

{flags_section(trained.record.arguments)}

## Provenance

- experiment: `{experiment.dir}`, round {i}: `{trained.checkpoint.path}`
- checkpoint fingerprint: `{trained.checkpoint.fingerprint}`
- exported: {now()}, weights in {dtype}
- trained with: {", ".join(f"{k} {v}" for k, v in versions.items()) or "-"}
"""
    return f"---\n{data.to_yaml()}\n---\n\n{body}"
