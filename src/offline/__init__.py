"""The offline pieces: what lets the whole job run with no download.

- `tiny.py`: tiny, randomly initialised checkpoints of the supported architectures, with a
  tokenizer trained on `tokenizer_corpus.py`;
- `synthetic/`: the synthetic CIRR-format benchmark (scenes and edits, caption grammar,
  rendering, the benchmark writer, its changes for the simulated captioner);
- `garments/`: a second synthetic domain (one garment per image, FashionIQ-like captions),
  never used for tuning (`--synthetic_domain garments`);
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

from collections.abc import Mapping

from src.arguments import AugmentArguments, DataArguments
from src.augment.captioners import DatasetCaptioner
from src.offline.builders import offline_benchmark, offline_model
from src.offline.caption_errors import CaptionErrorRates
from src.offline.scene_oracle import SCENE_ORACLE
from src.offline.simulated_captioner import simulated_dataset_captioner


class OfflineDefaults:
    """The tiny Qwen2-VL, a synthetic benchmark and its captioners (src/job.py, RunDefaults)."""

    model_label = "tiny_qwen2_vl"
    dataset_label = "synthetic"

    @staticmethod
    def model_path(data: DataArguments) -> str:
        return str(offline_model(data.cache_dir, data.image_size, seed=0, domain=data.synthetic_domain))

    @staticmethod
    def dataset_path(data: DataArguments) -> str:
        return str(
            offline_benchmark(
                data.cache_dir,
                data.synthetic_train_images,
                data.synthetic_val_images,
                data.synthetic_test_images,
                data.image_size,
                triplets_per_set=data.synthetic_triplets_per_set,
                domain=data.synthetic_domain,
            )
        )

    @staticmethod
    def dataset_captioners(augment: AugmentArguments) -> Mapping[str, DatasetCaptioner]:
        """The scene oracle (a perfect captioner) and the simulated one, with the flags' rates."""
        simulated = simulated_dataset_captioner(CaptionErrorRates(**augment.simulated_rates()))
        return {SCENE_ORACLE.name: SCENE_ORACLE, simulated.name: simulated}


OFFLINE_DEFAULTS = OfflineDefaults()
