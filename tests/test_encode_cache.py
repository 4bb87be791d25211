"""Encoding through the embedding cache: hits, a miss on every key change, damaged entries."""

import json

import numpy as np
import pytest
import torch

import src.retrieval.checkpoint_encoding as checkpoint_encoding
from src.arguments import EncodeArguments
from src.model.encoder import build_encoder
from src.retrieval.checkpoint_encoding import CheckpointEncoder, EncodeSettings
from src.retrieval.encode import (
    EmbeddingCache,
    encode_rows,
    gallery_rows,
    query_rows,
    text_query_rows,
)

TOKEN = "<|image_pad|>"


@pytest.fixture()
def encoder(tiny_qwen):
    return build_encoder(tiny_qwen, dtype="float32").eval()


@pytest.fixture()
def checkpoint(encoder, tmp_path):
    encoder.save(tmp_path / "checkpoint")
    return tmp_path / "checkpoint"


@pytest.fixture()
def counted(monkeypatch):
    calls = []

    def counting(encoder, rows, *args, **kwargs):
        calls.append(rows.kind)
        return encode_rows(encoder, rows, *args, **kwargs)

    monkeypatch.setattr(checkpoint_encoding, "encode_rows", counting)
    return calls


def test_gallery_encodes_each_distinct_image_once_in_gallery_order(small_train_split):
    rows = gallery_rows(small_train_split, TOKEN)
    assert rows.names == sorted(small_train_split.images) and len(set(rows.names)) == len(
        rows.names
    )
    queries = query_rows(small_train_split, small_train_split.triplets, TOKEN, "cirr")
    assert queries.names == [t.pairid for t in small_train_split.triplets]


def test_batched_encoding_equals_one_by_one(encoder, small_train_split):
    rows = gallery_rows(small_train_split, TOKEN, small_train_split.gallery_names()[:7])
    batched = encode_rows(encoder, rows, batch_size=3, num_workers=0)
    single = encode_rows(encoder, rows, batch_size=1, num_workers=0)
    assert batched.shape == (7, 128)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_cache_hit_and_a_miss_on_each_key_change(
    encoder, checkpoint, small_train_split, tmp_path, counted
):
    cache = EmbeddingCache(tmp_path / "cache")
    settings = EncodeSettings(EncodeArguments(encode_batch_size=4))
    names = small_train_split.gallery_names()[:6]
    rows = gallery_rows(small_train_split, TOKEN, names)
    reader = CheckpointEncoder(checkpoint, "weights-1", cache, settings)

    first = reader.encode(rows, "train")
    assert counted == ["gallery"]
    np.testing.assert_array_equal(reader.encode(rows, "train"), first)
    assert counted == ["gallery"], "same checkpoint and inputs must be a cache hit"

    reader.encode(gallery_rows(small_train_split, TOKEN, names[:5]), "train")
    assert len(counted) == 2, "other rows: miss"
    reader.encode(rows, "val")
    assert len(counted) == 3, "other split: miss"

    queries = small_train_split.triplets[:4]
    reader.queries(small_train_split, queries, "cirr")
    reader.queries(small_train_split, queries, "cirr")
    reader.queries(small_train_split, queries, "fashioniq")
    assert counted[3:] == ["queries", "queries"], "other prompt: miss; same prompt: hit"

    with torch.no_grad():
        next(p for p in encoder.parameters() if p.requires_grad).add_(0.01)
    encoder.save(tmp_path / "changed")
    changed = CheckpointEncoder(tmp_path / "changed", "weights-2", cache, settings)
    assert not np.array_equal(changed.encode(rows, "train"), first)
    assert len(counted) == 6, "other weights: miss"

    key = cache.key(rows, "train", "weights-1", "qwen2_vl", encoder.processor)
    encoder.processor.image_processor.image_mean = [0.4, 0.4, 0.4]
    assert cache.key(rows, "train", "weights-1", "qwen2_vl", encoder.processor) != key


def test_text_only_queries_have_no_image_and_a_cache_entry_of_their_own(
    encoder, checkpoint, small_train_split, tmp_path, counted
):
    """The evaluation's text-only queries: the instruction and the text, no image token,
    encoded through the same path as the composed queries, cached under their own key."""
    triplets = small_train_split.triplets[:5]
    rows = text_query_rows(triplets, "cirr")
    assert rows.images == [None] * 5 and not any(TOKEN in text for text in rows.texts)
    assert rows.texts[0] == (
        "Given an image, find a similar everyday image with the described changes: "
        f"{triplets[0].caption}\n"
    )
    cache = EmbeddingCache(tmp_path / "cache")
    with CheckpointEncoder(checkpoint, "w", cache, EncodeSettings(EncodeArguments(encode_batch_size=2))) as reader:
        encoded = reader.encode_split(small_train_split, triplets, "cirr", text_only=True)
        assert counted == ["gallery", "queries", "text_queries"]
        again = reader.text_queries(small_train_split, triplets, "cirr")
        assert counted == ["gallery", "queries", "text_queries"], "a hit"
    np.testing.assert_array_equal(again, encoded.text_queries)
    assert encoded.text_queries.shape == encoded.queries.shape
    assert not np.allclose(encoded.text_queries, encoded.queries, atol=1e-3)
    with torch.no_grad():
        direct = encoder(**encoder.backbone.pack(encoder.processor, rows.texts, None))
    np.testing.assert_allclose(encoded.text_queries, direct.numpy(), atol=1e-5)
    kinds = sorted(json.loads(f.read_text())["key"]["kind"] for f in (tmp_path / "cache").glob("*.json"))
    assert kinds == ["gallery", "queries", "text_queries"]


def test_a_fully_cached_split_never_loads_the_weights(checkpoint, small_train_split, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "cache")
    with CheckpointEncoder(checkpoint, "w", cache, EncodeSettings(EncodeArguments(encode_batch_size=8))) as reader:
        encoded = reader.encode_split(small_train_split, small_train_split.triplets[:5], "cirr")
    monkeypatch.setattr(checkpoint_encoding, "load_encoder", None)  # any load would fail
    with CheckpointEncoder(checkpoint, "w", cache, EncodeSettings(EncodeArguments(encode_batch_size=8))) as reader:
        again = reader.encode_split(small_train_split, small_train_split.triplets[:5], "cirr")
    np.testing.assert_array_equal(again.gallery, encoded.gallery)
    np.testing.assert_array_equal(again.queries, encoded.queries)


def test_a_damaged_cache_entry_is_encoded_again(checkpoint, small_train_split, tmp_path, counted):
    cache = EmbeddingCache(tmp_path / "cache")
    rows = gallery_rows(small_train_split, TOKEN, small_train_split.gallery_names()[:3])
    reader = CheckpointEncoder(checkpoint, "w", cache, EncodeSettings(EncodeArguments(encode_batch_size=8)))
    first = reader.encode(rows, "train")
    (matrix_file,) = (tmp_path / "cache").glob("*.npy")
    data = matrix_file.read_bytes()
    matrix_file.write_bytes(data[:-4] + bytes(4))  # same size, other bytes
    np.testing.assert_array_equal(reader.encode(rows, "train"), first)
    assert counted == ["gallery", "gallery"]
    matrix_file.write_bytes(data[:50])  # truncated
    np.testing.assert_array_equal(reader.encode(rows, "train"), first)
    (meta_file,) = (tmp_path / "cache").glob("*.json")
    meta_file.write_text('{"key": ')  # garbage
    np.testing.assert_array_equal(reader.encode(rows, "train"), first)
    assert counted == ["gallery"] * 4


def test_cache_entry_is_readable_with_numpy_and_json_alone(checkpoint, small_train_split, tmp_path):
    rows = gallery_rows(small_train_split, TOKEN, small_train_split.gallery_names()[:3])
    matrix = CheckpointEncoder(checkpoint, "w", EmbeddingCache(tmp_path), EncodeSettings()).encode(
        rows, "train"
    )
    (meta_file,) = tmp_path.glob("*.json")
    meta = json.loads(meta_file.read_text())
    assert meta["rows"] == rows.names and meta["key"]["kind"] == "gallery"
    np.testing.assert_array_equal(np.load(meta_file.with_suffix(".npy")), matrix)
