"""A saved embedder as a standalone Hugging Face model folder.

`export_embedder` loads a checkpoint in float32 (a LoRA adapter merged into its float32
base there, so no update is lost to a bfloat16 rounding of the sum), casts the merged
weights to the dtype asked for and writes an ordinary checkpoint: `config.json` and the
weights (`AutoModelForImageTextToText` loads them), the processor with the pixel budget
the embedder was trained with (`AutoProcessor`), and `embedder_config.json`, the
embedder's own settings: backbone, pooling, normalisation, pixel budget, attention kernel,
the two prompts it was trained with (`prompts`) and where it came from (`export`). The
project loads the folder as any saved embedder (`load_encoder`, `Retriever`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from src.arguments import EXPORT_DTYPES
from src.model.encoder import EMBEDDER_CONFIG_NAME, EmbedderConfig, load_encoder
from src.model.prompts import EmbedderPrompts

TORCH_DTYPES = {name: getattr(torch, name) for name in EXPORT_DTYPES}
PROMPTS_KEY = "prompts"
EXPORT_KEY = "export"


def export_embedder(
    checkpoint_dir: str | Path,
    output_dir: str | Path,
    prompts: EmbedderPrompts,
    dtype: str = "float32",
    provenance: dict | None = None,
) -> EmbedderConfig:
    """Write the embedder saved in `checkpoint_dir` into `output_dir` as a standalone model
    (see the module docstring); returns the record written to its embedder_config.json."""
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"export dtype {dtype!r}: choose one of {EXPORT_DTYPES}")
    output_dir = Path(output_dir)
    encoder = load_encoder(checkpoint_dir, dtype="float32")  # merges a LoRA adapter in float32
    model = encoder.model.to(TORCH_DTYPES[dtype])
    model.save_pretrained(output_dir)
    encoder.processor.save_pretrained(output_dir)
    config = replace(encoder.config, lora=False, adapter_base_model=None)
    settings = asdict(config) | {
        PROMPTS_KEY: prompts.to_json(),
        EXPORT_KEY: {"dtype": dtype, "lora_merged": encoder.config.lora, **(provenance or {})},
    }
    (output_dir / EMBEDDER_CONFIG_NAME).write_text(json.dumps(settings, indent=2))
    return config


def saved_prompts(checkpoint_dir: str | Path) -> EmbedderPrompts | None:
    """The prompts an exported embedder recorded (None: a checkpoint that did not)."""
    config_file = Path(checkpoint_dir) / EMBEDDER_CONFIG_NAME
    if not config_file.is_file():
        return None
    recorded = json.loads(config_file.read_text()).get(PROMPTS_KEY)
    return EmbedderPrompts.from_json(recorded) if recorded else None
