"""Using a trained round (src/use/, src/retrieval/retriever.py, eval_iterative.py --export /
--query_image / --export_index): the export loads with plain transformers and gives the
checkpoint's embeddings, a LoRA round is merged in float32, a validation query from the
command line ranks as the evaluation did, a second query reuses the cached gallery, the
index loads with numpy and faiss, the docstring example runs, and bad input is refused in
one line with nothing written."""

from __future__ import annotations

import doctest
import json
import re
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor

import src.retrieval.retriever as retriever_module
from src.arguments import ModelArguments
from src.artifacts import Evaluation
from src.cli import eval_main
from src.data.loading import load_split
from src.model.encoder import build_encoder
from src.model.export import export_embedder
from src.model.prompts import EmbedderPrompts
from src.retrieval.checkpoint_encoding import EncodeSettings
from src.retrieval.retriever import Retriever

ROUND = 2
RESULT_LINE = re.compile(r"^(\d+)\t(\S+)\t(-?\d+\.\d+)$")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def results(output: str) -> list[tuple[int, str, float]]:
    """The result lines the query command prints."""
    found = [RESULT_LINE.match(line) for line in output.splitlines()]
    return [(int(m[1]), m[2], float(m[3])) for m in found if m]


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folders` with its size and mtime: what "nothing written" compares."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for folder in folders
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def val_split(small_benchmark):
    return load_split("cirr", small_benchmark, "val")


def query_argv(experiment, split, triplet, *flags: str) -> list[str]:
    return ["--experiment_dir", str(experiment.dir), "--query_image", split.images[triplet.reference],
            "--query_text", triplet.caption, *flags]  # fmt: skip


# ---------------------------------------------------------------- export


@pytest.mark.slow
def test_an_exported_round_loads_with_plain_transformers_and_embeds_as_its_checkpoint(
    copied, val_split, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "model"
    assert eval_main(["--experiment_dir", str(copied.dir), "--export", str(out)]) == 0
    assert f"exported: {out}" in capsys.readouterr().out
    checkpoint = copied.checkpoint(ROUND)  # the default: the last evaluated round
    assert {"config.json", "model.safetensors", "embedder_config.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    assert not list(tmp_path.glob(".*partial"))

    # plain transformers: the model class and the processor with the round's pixel budget
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2VLProcessor"
    trained = AutoProcessor.from_pretrained(checkpoint).image_processor.size
    assert processor.image_processor.size["longest_edge"] == trained["longest_edge"]
    assert processor.image_processor.size["shortest_edge"] == trained["shortest_edge"]
    settings = json.loads((out / "embedder_config.json").read_text())
    assert settings["pooling"] == "last" and settings["normalize"] is True
    assert settings["backbone"] == "qwen2_vl" and settings["export"]["round"] == ROUND
    assert "{text}" in settings["prompts"]["query"]

    # the model card: YAML front matter with model-index from the round's evaluation
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["datasets"] == ["cirr"] and front["base_model"] == "tiny_qwen2_vl"
    metrics = Evaluation.read(copied.evaluation("val", ROUND)).metrics
    [index] = front["model-index"]
    assert {m["type"]: m["value"] for m in index["results"][0]["metrics"]} == pytest.approx(metrics)
    for heading in ("## Use it", "## Embedder settings", "## Evaluation", "## Training", "## Provenance"):
        assert heading in card
    rounds = re.findall(r"^\| (\d) \| \d+ triplets", card, re.M)
    assert rounds == ["0", "1", "2"]
    assert "| `--num_hard_negatives` | `2` | `1` |" in card

    # the card's own plain-transformers snippet, run as written, against the project's checkpoint
    triplet = val_split.triplets[0]
    gallery = [val_split.images[name] for name in sorted(val_split.images)[:2]]
    for name, source in zip(("reference.png", "gallery_1.png", "gallery_2.png"),
                            (val_split.images[triplet.reference], *gallery), strict=True):  # fmt: skip
        shutil.copy(source, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    plain_snippet = re.findall(r"```python\n(.*?)```", card, re.S)[0]
    scope: dict = {}
    exec(plain_snippet, scope)
    with Retriever.from_checkpoint(checkpoint) as original:
        text = "make the shapes red"  # the snippet's text
        expected_query = original.encode_queries([(tmp_path / "reference.png", text)])
        expected_gallery = original.encode_images(gallery)
    assert cosines(scope["query"].numpy(), expected_query).min() >= 0.9999
    assert cosines(scope["gallery"].numpy(), expected_gallery).min() >= 0.9999

    # through the project: the exported folder embeds as the checkpoint does
    with Retriever.from_checkpoint(out) as exported:
        assert exported.prompts == original.prompts
        queries = exported.encode_queries([(val_split.images[t.reference], t.caption) for t in val_split.triplets[:4]])
        images = exported.encode_images(gallery)
    with Retriever.from_checkpoint(checkpoint) as original:
        assert cosines(queries, original.encode_queries(
            [(val_split.images[t.reference], t.caption) for t in val_split.triplets[:4]])).min() >= 0.9999  # fmt: skip
        assert cosines(images, original.encode_images(gallery)).min() >= 0.9999


def test_a_lora_round_is_merged_in_float32_and_cast_to_the_export_dtype(tiny_qwen, tmp_path):
    encoder = build_encoder(tiny_qwen, ModelArguments(lora=True, lora_r=4))
    with torch.no_grad():  # a trained adapter (a fresh one adds nothing: its B is zero)
        for name, parameter in encoder.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    encoder.save(tmp_path / "adapter")
    build_encoder(tiny_qwen).save(tmp_path / "untrained")
    prompts = EmbedderPrompts.of("<|image_pad|>", "cirr")
    for dtype in ("float32", "bfloat16"):
        export_embedder(tmp_path / "adapter", tmp_path / dtype, prompts, dtype)
    settings = json.loads((tmp_path / "float32" / "embedder_config.json").read_text())
    assert settings["export"]["lora_merged"] and not settings["lora"]
    assert not (tmp_path / "float32" / "adapter_config.json").exists()
    with safe_open(tmp_path / "bfloat16" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.bfloat16}  # noqa: SIM118

    Image.new("RGB", (56, 56), (200, 40, 40)).save(tmp_path / "red.png")
    queries = [(tmp_path / "red.png", "add a blue circle"), (tmp_path / "red.png", "remove the shapes")]
    float32 = EncodeSettings(dtype="float32")
    embeddings = {}
    for name in ("adapter", "float32", "bfloat16", "untrained"):
        with Retriever.from_checkpoint(tmp_path / name, settings=float32) as retriever:
            embeddings[name] = retriever.encode_queries(queries)
    assert cosines(embeddings["float32"], embeddings["adapter"]).min() >= 0.9999
    assert cosines(embeddings["bfloat16"], embeddings["adapter"]).min() >= 0.99
    assert cosines(embeddings["untrained"], embeddings["adapter"]).min() < 0.999  # the merge mattered


# ---------------------------------------------------------------- queries


@pytest.mark.slow
def test_a_validation_query_from_the_command_line_ranks_as_the_evaluation_did(
    copied, val_split, tmp_path, capsys
):
    evaluation = Evaluation.read(copied.evaluation("val", ROUND))
    for triplet in val_split.triplets[:2]:
        output = tmp_path / f"query_{triplet.pairid}.json"
        argv = query_argv(copied, val_split, triplet, "--top_k", "5", "--output_file", str(output))
        assert eval_main(argv) == 0
        printed = capsys.readouterr().out
        ranking = results(printed)
        names = [name for _, name, _ in ranking]
        assert [rank for rank, _, _ in ranking] == [1, 2, 3, 4, 5]
        assert names[0] == evaluation.queries[triplet.pairid].top[0]
        assert names == evaluation.queries[triplet.pairid].top
        assert triplet.reference not in names  # left out, as CIRR's evaluation does
        assert "60 images, read from the embedding cache" in printed  # the evaluation's embeddings
        saved = json.loads(output.read_text())
        assert saved["left_out"] == [triplet.reference] and saved["round"] == ROUND
        assert saved["target"] == triplet.target  # a query of the split's own
        assert [hit["name"] for hit in saved["results"]] == names
        scores = [hit["score"] for hit in saved["results"]]
        assert scores == sorted(scores, reverse=True)
        page = output.with_suffix(".html").read_text()
        sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
        assert len(sources) == 6 and all((tmp_path / src).is_file() for src in sources)
        assert triplet.caption in page and f"1: {names[0]}" in page


@pytest.mark.slow
def test_a_second_query_costs_one_query_encoding(copied, val_split, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    names = sorted(val_split.images)[:8]
    for i, name in enumerate(names):
        shutil.copy(val_split.images[name], folder / ("more" if i % 2 else "") / f"{name}.png")
    reference = folder / f"{names[0]}.png"
    argv = ["--experiment_dir", str(copied.dir), "--query_image", str(reference), "--gallery", str(folder)]
    before = set(copied.embeddings_dir.iterdir())
    assert eval_main([*argv, "--query_text", "add a red circle"]) == 0
    assert "8 images, encoded and cached" in capsys.readouterr().out
    [matrix] = [p for p in set(copied.embeddings_dir.iterdir()) - before if p.suffix == ".npy"]
    assert matrix.name.startswith("folder_gallery_")
    entries, stamp = set(copied.embeddings_dir.iterdir()), matrix.stat().st_mtime_ns

    assert eval_main([*argv, "--query_text", "remove the blue square"]) == 0
    second = capsys.readouterr().out
    assert "8 images, read from the embedding cache" in second
    assert set(copied.embeddings_dir.iterdir()) == entries and matrix.stat().st_mtime_ns == stamp
    ranked = [name for _, name, _ in results(second)]
    assert len(ranked) == 7 and f"{names[0]}.png" not in ranked  # 8 images, the reference left out
    assert f"more/{names[1]}.png" in ranked  # named by the path under the folder
    shutil.copy(reference, tmp_path / "my_copy.png")  # a copy of the reference is left out too
    copy_argv = [*argv[:3], str(tmp_path / "my_copy.png"), *argv[4:], "--query_text", "add a circle"]
    assert eval_main(copy_argv) == 0
    assert f"{names[0]}.png" not in [name for _, name, _ in results(capsys.readouterr().out)]

    # the same through the Python API, counted by the encoder: no gallery row encoded again
    from src.use.trained_round import TrainedRound, gallery_source

    trained = TrainedRound.open(copied.dir)
    with trained.retriever(EncodeSettings()) as retriever:
        gallery = gallery_source(trained, str(folder)).encode(retriever)
        assert gallery.from_cache and retriever.encoded_rows == 0
        assert len(retriever.query(reference, "make it green", gallery, k=3)) == 3
        assert retriever.encoded_rows == 1


@pytest.mark.slow
def test_the_gallery_index_loads_with_numpy_and_faiss_and_answers_the_exported_model(
    copied, val_split, tmp_path, capsys
):
    index_dir, model_dir = tmp_path / "index", tmp_path / "model"
    triplet = val_split.triplets[1]
    argv = query_argv(copied, val_split, triplet, "--top_k", "5", "--export_index", str(index_dir),
                      "--export", str(model_dir))  # fmt: skip
    assert eval_main(argv) == 0
    ranking = results(capsys.readouterr().out)
    embeddings = np.load(index_dir / "embeddings.npy")
    names = json.loads((index_dir / "names.json").read_text())
    settings = json.loads((index_dir / "settings.json").read_text())
    assert names == sorted(val_split.images) and embeddings.dtype == np.float32
    assert embeddings.shape == (len(names), settings["dim"]) and settings["count"] == len(names)
    assert settings["round"] == ROUND and "{text}" in settings["prompts"]["query"]
    assert "faiss.IndexFlatIP" in (index_dir / "README.md").read_text()

    with Retriever.from_checkpoint(model_dir) as exported:  # as the README shows
        query = exported.encode_queries([(val_split.images[triplet.reference], triplet.caption)])
    scores = (query @ embeddings.T)[0]
    scores[names.index(triplet.reference)] = -np.inf
    best = int(np.argmax(scores))
    assert names[best] == ranking[0][1]
    for _, name, score in ranking:
        assert scores[names.index(name)] == pytest.approx(score, abs=1e-4)
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    _, found = index.search(query, 2)
    assert [names[j] for j in found[0] if names[j] != triplet.reference][0] == ranking[0][1]


@pytest.mark.slow
def test_the_retriever_docstring_example_runs(two_round_experiment, val_split):
    images = [val_split.images[name] for name in sorted(val_split.images)[:6]]
    globs = {"checkpoint": two_round_experiment.checkpoint(ROUND), "images": images, "reference": images[0]}
    [example] = [t for t in doctest.DocTestFinder().find(retriever_module, globs=globs) if t.examples]
    runner = doctest.DocTestRunner()
    runner.run(example)
    assert runner.summarize().failed == 0 and runner.summarize().attempted == len(example.examples) > 5


# ---------------------------------------------------------------- bad input


BAD_INPUT = {
    "missing image": (["--query_image", "{tmp}/nope.png"], "query image {tmp}/nope.png: no such file"),
    "unreadable image": (["--query_image", "{tmp}/bad.png"], "query image {tmp}/bad.png: cannot be read as an image"),
    "empty text": (["--query_text", "  "], "the query text is empty"),
    "never trained": (["--iterations", "7"], "round 7 was never trained (trained rounds: 0, 1, 2)"),
    "export folder not empty": (["--export", "{tmp}/used"], "--export {tmp}/used: not an empty folder"),
    "two rounds": (["--iterations", "1,2"], "--iterations '1,2': one round"),
    "unknown gallery": (["--gallery", "{tmp}/nowhere"], "neither a split of cirr"),
    "export dtype": (["--export_dtype", "int8"], "--export_dtype 'int8': choose one of"),
    "text without image": ([], "a query needs both --query_image and --query_text"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_with_exit_status_2_and_nothing_written(
    case, copied, val_split, tmp_path, capsys
):
    (tmp_path / "bad.png").write_text("not an image")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "mine.txt").write_text("kept")
    triplet = val_split.triplets[0]
    flags, message = BAD_INPUT[case]
    flags = [flag.replace("{tmp}", str(tmp_path)) for flag in flags]
    argv = query_argv(copied, val_split, triplet, "--output_file", str(tmp_path / "ranking.json"),
                      "--export_index", str(tmp_path / "index"), *flags)  # fmt: skip
    if case == "text without image":
        at = argv.index("--query_image")
        argv = argv[:at] + argv[at + 2 :]
    before = snapshot(copied.dir, tmp_path)
    assert eval_main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: "), error
    assert message.replace("{tmp}", str(tmp_path)) in error
    assert snapshot(copied.dir, tmp_path) == before


@pytest.mark.slow
def test_the_query_page_renders_in_headless_chromium(copied, val_split, tmp_path, browser_screenshot):
    output = tmp_path / "ranking.json"
    argv = query_argv(copied, val_split, val_split.triplets[0], "--output_file", str(output))
    assert eval_main(argv) == 0
    browser_screenshot(output.with_suffix(".html"), "1200,900")
