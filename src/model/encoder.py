"""The VLM2Vec embedder: a vision-language model whose last token's state is the embedding.

Save and load live here too, so a `checkpoint_iter_{i}/` directory (full model or LoRA
adapter, plus the processor and `embedder_config.json`) loads alone and gives the same
embeddings it gave before saving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import resource
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel, ProcessorMixin

from src.arguments import ModelArguments, check_attn_implementation
from src.devices import bf16_capable
from src.errors import ArgumentError
from src.model.registry import (
    ADAPTER_CONFIG_NAME,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    Backbone,
    adapter_base,
    detect_backbone,
    get_backbone,
    load_processor,
)

logger = logging.getLogger(__name__)

EMBEDDER_CONFIG_NAME = "embedder_config.json"
SAFE_ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
# Module names of the vision tower: Qwen's `visual` (merger included), LLaVA's `vision_tower`.
VISION_MODULES = r".*\b(visual|vision_tower)\b.*"


def is_vision_module(name: str) -> bool:
    return re.fullmatch(VISION_MODULES, name) is not None


@dataclass
class EmbedderConfig:
    """What a saved embedder is: written beside the weights as `embedder_config.json`."""

    backbone: str
    base_model: str
    adapter_base_model: str | None
    lora: bool
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: list[str]
    freeze_vision_tower: bool
    min_pixels: int | None
    max_pixels: int | None
    pooling: str = "last"
    normalize: bool = True
    attn_implementation: str = "sdpa"  # embedders saved before the flag used SDPA

    @classmethod
    def of(cls, options: ModelArguments, **resolved: object) -> EmbedderConfig:
        """The record of an embedder built with `options` (the flags it shares by name),
        with what the build resolved (backbone, base model paths, pixel budget)."""
        shared = {f.name: getattr(options, f.name) for f in fields(cls) if hasattr(options, f.name)}
        return cls(**shared | {"lora_target_modules": options.lora_targets} | resolved)

    def base_models(self) -> list[str]:
        """The folders a LoRA adapter's embeddings depend on besides its own files (its base,
        and the base of an adapter it was built on); none for a full model."""
        if not self.lora:
            return []
        return [self.base_model] + ([self.adapter_base_model] if self.adapter_base_model else [])

    def to_json_string(self) -> str:
        """As transformers' configs do: TensorBoard logs the model's config with this."""
        return json.dumps(asdict(self), indent=2)


def _output_requires_grad(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    output.requires_grad_(True)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each row's last non-pad token, for left or right padding alike."""
    seq_len = attention_mask.shape[1]
    last = seq_len - 1 - attention_mask.flip(1).long().argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class VLM2VecEncoder(nn.Module):
    """Wraps a (possibly LoRA-adapted) image-text-to-text model as an embedder."""

    def __init__(self, model: nn.Module, processor: ProcessorMixin, config: EmbedderConfig):
        super().__init__()
        self.model = model
        self.processor = processor
        self.config = config
        self.backbone: Backbone = get_backbone(config.backbone)

    def _trunk(self) -> nn.Module:
        """The multimodal trunk without the language-model head (no vocabulary projection)."""
        hf_model = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        return hf_model.model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        pixels = inputs.get("pixel_values")
        if pixels is not None and pixels.dtype == torch.uint8:  # packed for the device (`pack`)
            inputs = inputs | {"pixel_values": self.backbone.device_pixel_values(self.processor, pixels)}
        outputs = self._trunk()(**inputs, use_cache=False, return_dict=True)
        pooled = last_token_pool(outputs.last_hidden_state, inputs["attention_mask"]).float()
        return F.normalize(pooled, dim=-1) if self.config.normalize else pooled

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """What the Trainer calls for --gradient_checkpointing: delegated to the wrapped model.

        Under LoRA, reentrant checkpointing needs the blocks' input to require a gradient;
        transformers makes every input embedding's output require one, the vision tower's
        patch embedding included, so a frozen tower would run its backward (and its
        recomputation) for nothing. Here the token embeddings' output requires one, and a
        vision tower's only where something in the tower trains.
        """
        hf_model = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        hf_model.activation_checkpointing_enable(
            activation_checkpointing_kwargs, every_n_layers=every_n_layers, offload=offload
        )
        if isinstance(self.model, PeftModel):
            hf_model.disable_input_require_grads()
            embeddings = [hf_model.get_input_embeddings()]
            for name, tower in hf_model.named_modules():
                trains = any(p.requires_grad for p in tower.parameters())
                if is_vision_module(name) and isinstance(tower, PreTrainedModel) and trains:
                    embeddings.append(tower.get_input_embeddings())
            for module in embeddings:
                module.register_forward_hook(_output_requires_grad)

    def save(self, output_dir: str | Path) -> None:
        """Weights (full model or adapter), processor and embedder_config.json."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(output_dir)
        self.processor.save_pretrained(output_dir)
        (output_dir / EMBEDDER_CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))


def default_device() -> torch.device:
    """This process's GPU (by LOCAL_RANK under torchrun / accelerate) if there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _gib(amount: int) -> str:
    return f"{amount / 2**30:.2f} GiB"


@contextlib.contextmanager
def logged_loading(what: str, device: torch.device) -> Iterator[None]:
    """Log a model load: its device, time, and this process's host memory (resident before,
    and the process's peak resident size after, which includes the load)."""
    before, start = psutil.Process().memory_info().rss, time.perf_counter()
    yield
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    logger.info(
        "loaded %s onto %s in %.1f s; host memory %s before, process peak %s",
        what,
        device,
        time.perf_counter() - start,
        _gib(before),
        _gib(peak),
    )


def resolve_dtype(name: str, trains_all_weights: bool = False) -> torch.dtype:
    """The dtype weights are loaded in.

    `auto` is float32 for weights that full fine-tuning updates: AdamW on bfloat16 weights
    loses every update smaller than a bfloat16 step (a norm weight near 1.0 moves in steps
    of 2^-7, far above learning rate x gradient), so parts of the model would silently
    never learn; the speed comes from `--bf16` autocast instead. Frozen weights (a LoRA
    base) and inference get bfloat16 on a GPU that runs it natively (compute capability
    8.0 or later: src/devices.py `bf16_capable`, asked of this process's own GPU); float32
    elsewhere.
    """
    if name == "auto":
        if trains_all_weights:
            return torch.float32
        if bf16_capable(default_device()):  # natively: compute capability >= 8.0
            return torch.bfloat16
        return torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"--torch_dtype {name!r}: choose auto or one of {sorted(dtypes)}")
    return dtypes[name]


def _load_hf_model(
    path: str | Path,
    backbone: Backbone,
    dtype: torch.dtype,
    attn_implementation: str,
    adapter_base_model: str | None = None,
) -> nn.Module:
    """A full model from a checkpoint directory, or from a LoRA adapter merged into its base,
    loaded straight onto this process's device (`device_map`: the safetensors are read
    shard by shard onto it, with no full copy in host memory first).

    Released embedders such as VLM2Vec-Qwen2VL-2B ship as a LoRA adapter (adapter_config.json
    beside the base's config and processor); their base must be a local directory, named by
    `adapter_base_model` or, if that is a local path, by the adapter's own config.
    """
    path, device = Path(path), default_device()
    options = {"dtype": dtype, "device_map": {"": str(device)}, "attn_implementation": attn_implementation}
    with logged_loading(str(path), device):
        if not (path / ADAPTER_CONFIG_NAME).is_file():
            return backbone.model_class.from_pretrained(str(path), **options)
        base = adapter_base_model or adapter_base(path)
        if not Path(base).is_dir():
            raise FileNotFoundError(
                f"{path} is a LoRA adapter whose base model {base!r} is not a local directory; "
                "pass its local path with --base_model_name"
            )
        base_model = backbone.model_class.from_pretrained(str(base), **options)
        adapted = PeftModel.from_pretrained(base_model, str(path), torch_device=str(device))
        return adapted.merge_and_unload()


def freeze_unused_head(model: nn.Module) -> None:
    """Freeze the language-model head, which an embedder never runs (unless tied to the input
    embeddings). Left trainable it would get no gradient, which DDP reports as an error."""
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is not embeddings.weight:
        head.weight.requires_grad_(False)


def build_encoder(
    model_name: str | Path,
    options: ModelArguments | None = None,
    for_training: bool = True,
    dtype: str | None = None,
) -> VLM2VecEncoder:
    """A fresh embedder on top of a base checkpoint (round 0), built as `options` say
    (default: the flags' defaults), optionally with a new LoRA adapter.

    `freeze_vision_tower` keeps the vision tower as it is: no gradient for its weights in
    full fine-tuning, no adapters in it with LoRA. Every LoRA target name must name linear
    layers of the model (outside the vision tower when it is frozen).

    A directory that already holds an embedder (`embedder_config.json`) is loaded as such,
    with the pixel budget it was trained with unless `options` set one. A new Qwen2-VL /
    Qwen2.5-VL embedder gets DEFAULT_MIN_PIXELS / DEFAULT_MAX_PIXELS unless told otherwise.
    """
    options = options or ModelArguments()
    dtype = dtype or options.torch_dtype
    if (Path(model_name) / EMBEDDER_CONFIG_NAME).is_file():
        return load_encoder(
            model_name,
            dtype=dtype,
            trainable=for_training,
            min_pixels=options.min_pixels,
            max_pixels=options.max_pixels,
        )
    backbone_name = options.model_backbone or detect_backbone(model_name)
    processor, min_pixels, max_pixels = new_embedder_processor(
        model_name, backbone_name, options.min_pixels, options.max_pixels
    )
    adapter_base = options.base_model_name
    config = EmbedderConfig.of(
        options,
        backbone=backbone_name,
        base_model=str(Path(model_name).resolve()),
        adapter_base_model=str(Path(adapter_base).resolve()) if adapter_base else None,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    weights_dtype = resolve_dtype(dtype, trains_all_weights=for_training and not config.lora)
    model = _load_hf_model(
        model_name,
        get_backbone(backbone_name),
        weights_dtype,
        config.attn_implementation,
        config.adapter_base_model,
    )
    return embedder_from_model(model, processor, config)


def embedder_from_model(
    model: nn.Module, processor: ProcessorMixin, config: EmbedderConfig
) -> VLM2VecEncoder:
    """A new embedder around a loaded (or freshly built) image-text-to-text model: the unused
    head frozen, the vision tower frozen if asked, LoRA adapters added if asked."""
    freeze_unused_head(model)
    if config.freeze_vision_tower:
        for name, parameter in model.named_parameters():
            if is_vision_module(name):
                parameter.requires_grad_(False)
    if config.lora:
        check_lora_targets(model, config.lora_target_modules, config.freeze_vision_tower)
        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            exclude_modules=VISION_MODULES if config.freeze_vision_tower else None,
            init_lora_weights="gaussian",
        )
        model = get_peft_model(model, peft_config)
    return VLM2VecEncoder(model, processor, config)


def new_embedder_processor(
    model_name: str | Path, backbone: str, min_pixels: int | None, max_pixels: int | None
) -> tuple[ProcessorMixin, int | None, int | None]:
    """The processor a new embedder on `model_name` uses, with its pixel budget applied
    (the defaults where the backbone has one and none is given), and that budget."""
    backbone_entry = get_backbone(backbone)
    if backbone_entry.pixel_budget:
        min_pixels = min_pixels or DEFAULT_MIN_PIXELS
        max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    processor = load_processor(model_name)
    backbone_entry.apply_pixel_budget(processor, min_pixels, max_pixels)
    return processor, min_pixels, max_pixels


def embedder_processor(model_path: str | Path, options: ModelArguments) -> tuple[str, ProcessorMixin]:
    """(backbone, processor) of the embedder a run builds from `model_path` with `options`
    (a saved embedder: its own, with `options`' budget if set), read without any weight."""
    saved = load_embedder_config(model_path)
    backbone = saved.backbone if saved else options.model_backbone or detect_backbone(model_path)
    if saved is None:
        return backbone, new_embedder_processor(model_path, backbone, options.min_pixels, options.max_pixels)[0]
    processor = load_processor(model_path)
    get_backbone(backbone).apply_pixel_budget(processor, options.min_pixels, options.max_pixels)
    return backbone, processor


def lora_target_counts(
    model: nn.Module, targets: list[str], skip_vision: bool = False
) -> dict[str, int]:
    """How many linear layers each LoRA target name (a module name's last part) matches
    (on a model that already has adapters: how many got one)."""
    counts = dict.fromkeys(targets, 0)
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        vision_skipped = skip_vision and is_vision_module(name)
        linear = isinstance(module, (nn.Linear, BaseTunerLayer))
        if last in counts and linear and not vision_skipped:
            counts[last] += 1
    return counts


def check_lora_targets(model: nn.Module, targets: list[str], skip_vision: bool = False) -> None:
    """Refuse target names that match no linear layer: a flag that would change nothing."""
    counts = lora_target_counts(model, targets, skip_vision)
    unmatched = [name for name, count in counts.items() if not count]
    if unmatched:
        where = "outside the vision tower " if skip_vision else ""
        raise ArgumentError(
            f"--lora_target_modules: {', '.join(unmatched)} match no linear layer {where}of "
            f"{type(model).__name__}; name the last part of module names such as q_proj"
        )


def load_embedder_config(checkpoint_dir: str | Path) -> EmbedderConfig | None:
    """What a saved embedder is (None for a plain Hugging Face checkpoint), without its weights.

    Keys the record does not declare are left to their readers: an exported model's file
    also holds its prompts and where it came from (src/model/export.py)."""
    config_file = Path(checkpoint_dir) / EMBEDDER_CONFIG_NAME
    if not config_file.is_file():
        return None
    saved = json.loads(config_file.read_text())
    return EmbedderConfig(**{f.name: saved[f.name] for f in fields(EmbedderConfig) if f.name in saved})


def load_encoder(
    checkpoint_dir: str | Path,
    dtype: str = "auto",
    trainable: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> VLM2VecEncoder:
    """Load a saved embedder with the pixel budget it was saved with, unless `min_pixels` /
    `max_pixels` override it; a plain Hugging Face checkpoint loads as an untrained embedder.

    For inference (not `trainable`) a LoRA adapter on a float32 base is merged into it:
    mining and evaluation then run one matrix product per layer instead of three, with the
    same embeddings to float tolerance (tests/test_encoder.py). On a bfloat16 (or float16)
    base it stays unmerged, as it was trained: merging would round every weight's update
    smaller than half a bfloat16 step of that weight away (2^-9 of it), and mining and
    evaluation would measure another model than the one trained.
    """
    checkpoint_dir = Path(checkpoint_dir)
    config = load_embedder_config(checkpoint_dir)
    if config is None:
        options = ModelArguments(min_pixels=min_pixels, max_pixels=max_pixels)
        return build_encoder(checkpoint_dir, options, for_training=trainable, dtype=dtype)
    check_attn_implementation(config.attn_implementation)
    backbone = get_backbone(config.backbone)
    torch_dtype = resolve_dtype(dtype, trains_all_weights=trainable and not config.lora)
    if config.lora:
        base = _load_hf_model(
            config.base_model, backbone, torch_dtype, config.attn_implementation, config.adapter_base_model
        )
        model = PeftModel.from_pretrained(
            base, str(checkpoint_dir), is_trainable=trainable, torch_device=str(default_device())
        )
        if not trainable and torch_dtype == torch.float32:
            model = model.merge_and_unload()
    else:
        model = _load_hf_model(checkpoint_dir, backbone, torch_dtype, config.attn_implementation)
        freeze_unused_head(model)
    processor = load_processor(checkpoint_dir)
    backbone.apply_pixel_budget(processor, min_pixels, max_pixels)
    if min_pixels is not None or max_pixels is not None:
        config = replace(
            config,
            min_pixels=min_pixels or config.min_pixels,
            max_pixels=max_pixels or config.max_pixels,
        )
    return VLM2VecEncoder(model, processor, config)


def load_weights_into(encoder: VLM2VecEncoder, checkpoint_dir: str | Path) -> None:
    """Load the weights saved in `checkpoint_dir` into an existing encoder (Trainer resume),
    onto the encoder's device: a LoRA adapter's straight from its safetensors; a full
    model's through `from_pretrained` (which maps the saved names) onto that device, never
    as a float32 copy in host memory."""
    checkpoint_dir, parameter = Path(checkpoint_dir), next(encoder.parameters())
    if isinstance(encoder.model, PeftModel):
        weights = load_file(checkpoint_dir / SAFE_ADAPTER_WEIGHTS_NAME, device=str(parameter.device))
        result = set_peft_model_state_dict(encoder.model, weights)
        if result.unexpected_keys:
            raise ValueError(f"{checkpoint_dir}: adapter weights {result.unexpected_keys[:3]} fit no layer")
        return
    saved = _load_hf_model(
        checkpoint_dir, encoder.backbone, parameter.dtype, encoder.config.attn_implementation
    )
    encoder.model.load_state_dict(saved.state_dict())
