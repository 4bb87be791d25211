"""Encoding through the embedding cache: hits, and a miss on every key change."""

import json

import numpy as np
import pytest
import torch

import src.retrieval.encode as encode_module
from src.model.encoder import build_encoder
from src.retrieval.encode import (
    EmbeddingCache,
    encode_cached,
    encode_rows,
    gallery_rows,
    query_rows,
    weights_fingerprint,
)


@pytest.fixture()
def encoder(tiny_qwen):
    return build_encoder(tiny_qwen, dtype="float32").eval()


@pytest.fixture()
def counted(monkeypatch):
    calls = []

    def counting(encoder, rows, *args, **kwargs):
        calls.append(rows.kind)
        return encode_rows(encoder, rows, *args, **kwargs)

    monkeypatch.setattr(encode_module, "encode_rows", counting)
    return calls


def test_gallery_encodes_each_distinct_image_once_in_gallery_order(encoder, small_train_split):
    rows = gallery_rows(small_train_split, encoder)
    assert rows.names == sorted(small_train_split.images) and len(set(rows.names)) == len(
        rows.names
    )
    queries = query_rows(small_train_split, small_train_split.triplets, encoder, "cirr")
    assert queries.names == [t.pairid for t in small_train_split.triplets]


def test_batched_encoding_equals_one_by_one(encoder, small_train_split):
    rows = gallery_rows(small_train_split, encoder, small_train_split.gallery_names()[:7])
    batched = encode_rows(encoder, rows, batch_size=3, num_workers=0)
    single = encode_rows(encoder, rows, batch_size=1, num_workers=0)
    assert batched.shape == (7, 128)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_cache_hit_and_a_miss_on_each_key_change(encoder, small_train_split, tmp_path, counted):
    cache = EmbeddingCache(tmp_path)
    names = small_train_split.gallery_names()[:6]
    rows = gallery_rows(small_train_split, encoder, names)

    def run(enc, rows, split="train"):
        return encode_cached(
            enc, rows, split, cache, weights_fingerprint(enc), batch_size=4, num_workers=0
        )

    first = run(encoder, rows)
    assert counted == ["gallery"]
    np.testing.assert_array_equal(run(encoder, rows), first)
    assert counted == ["gallery"], "same checkpoint and inputs must be a cache hit"

    run(encoder, gallery_rows(small_train_split, encoder, names[:5]))
    assert len(counted) == 2, "other rows: miss"
    run(encoder, rows, split="val")
    assert len(counted) == 3, "other split: miss"

    queries = small_train_split.triplets[:4]
    run(encoder, query_rows(small_train_split, queries, encoder, "cirr"))
    run(encoder, query_rows(small_train_split, queries, encoder, "cirr"))
    run(encoder, query_rows(small_train_split, queries, encoder, "fashioniq"))
    assert counted[3:] == ["queries", "queries"], "other prompt: miss; same prompt: hit"

    with torch.no_grad():
        next(p for p in encoder.parameters() if p.requires_grad).add_(0.01)
    changed = run(encoder, rows)
    assert len(counted) == 6, "other weights: miss"
    assert not np.array_equal(changed, first)

    encoder.processor.image_processor.image_mean = [0.4, 0.4, 0.4]
    run(encoder, rows)
    assert len(counted) == 7, "other processor settings: miss"


def test_cache_entry_is_readable_with_numpy_and_json_alone(encoder, small_train_split, tmp_path):
    rows = gallery_rows(small_train_split, encoder, small_train_split.gallery_names()[:3])
    matrix = encode_cached(encoder, rows, "train", EmbeddingCache(tmp_path), num_workers=0)
    (meta_file,) = tmp_path.glob("*.json")
    meta = json.loads(meta_file.read_text())
    assert meta["rows"] == rows.names and meta["key"]["kind"] == "gallery"
    np.testing.assert_array_equal(np.load(meta_file.with_suffix(".npy")), matrix)
