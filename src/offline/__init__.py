"""The offline pieces: what lets the whole job run with no download.

- `tiny.py`: tiny, randomly initialised checkpoints of the supported architectures, with a
  tokenizer trained on `tokenizer_corpus.py`;
- `synthetic/`: the synthetic CIRR-format benchmark (scenes and edits, caption grammar,
  rendering, the benchmark writer, its changes for the simulated captioner);
- `garments/`: a second synthetic domain (one garment per image, FashionIQ-like captions),
  never used for tuning;
- `cirr_benchmark.py`: the image sets and the CIRR writer both benchmarks share;
- `domain.py`, `domains.py`: what a domain offers the captioners, and which domain a
  dataset folder is (by its descriptions file);
- `scene_oracle.py`: the exact difference captioner of either domain;
- `simulated_captioner.py` (with `caption_truth.py`, `caption_errors.py`): an imperfect
  captioner of any pair, with set error rates;
- `builders.py`: the default model and benchmark built once into a cache folder.

The product code under src/ does not import this package; the entry point hands
`OFFLINE_DEFAULTS` to `resolve_job`, which uses it only for what the user left out.
"""

from __future__ import annotations

from src.arguments import DataArguments
from src.offline.builders import offline_benchmark, offline_model
from src.offline.scene_oracle import SCENE_ORACLE


class OfflineDefaults:
    """The tiny Qwen2-VL, the synthetic benchmark and its scene oracle (src/job.py, RunDefaults)."""

    model_label = "tiny_qwen2_vl"
    dataset_label = "synthetic"
    dataset_captioners = {SCENE_ORACLE.name: SCENE_ORACLE}

    @staticmethod
    def model_path(data_args: DataArguments) -> str:
        return str(offline_model(data_args.cache_dir, data_args.image_size, seed=0))

    @staticmethod
    def dataset_path(data_args: DataArguments) -> str:
        return str(
            offline_benchmark(
                data_args.cache_dir,
                data_args.synthetic_train_images,
                data_args.synthetic_val_images,
                data_args.synthetic_test_images,
                data_args.image_size,
                triplets_per_set=data_args.synthetic_triplets_per_set,
            )
        )


OFFLINE_DEFAULTS = OfflineDefaults()
