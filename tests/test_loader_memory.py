"""DataLoader workers and prefetch chosen from a measured batch and the node's free shared
and host memory; /dev/shm checked before any work, in one line (src/data/loader_memory.py)."""

from __future__ import annotations

import torch

from src.data import loader_memory
from src.data.loader_memory import MIB, batch_bytes, choose_loader, shared_memory_refusal

GIB = 1024 * MIB


def test_a_batch_is_measured_through_nested_chunks():
    chunk = {"pixel_values": torch.zeros(10, 588, dtype=torch.uint8), "input_ids": torch.zeros(2, 5, dtype=torch.long)}
    batch = {"query_chunks": [chunk, chunk], "candidate_chunks": [chunk], "positive_ids": torch.zeros(2, dtype=torch.long)}
    assert batch_bytes(batch) == 3 * (5880 + 80) + 16
    assert batch_bytes((torch.zeros(3), ["text", None])) == 12


def test_workers_and_prefetch_come_down_to_what_fits():
    batch = 115 * MIB  # the CIRR preset with uint8 pixels: 64 queries x 3 images at 448 x 448
    roomy = choose_loader(8, None, batch, shm_free=64 * GIB, host_available=512 * GIB, processes=8)
    assert (roomy.workers, roomy.prefetch) == (8, 2)
    # a tighter node: prefetch 1 first, then fewer workers
    tight = choose_loader(8, None, batch, shm_free=16 * GIB, host_available=512 * GIB, processes=8)
    assert (tight.workers, tight.prefetch) == (8, 1)
    tighter = choose_loader(8, None, batch, shm_free=8 * GIB, host_available=512 * GIB, processes=8)
    assert (tighter.workers, tighter.prefetch) == (4, 1)
    # host memory bounds too: W x (F + 1) batches
    host = choose_loader(8, 2, batch, shm_free=64 * GIB, host_available=16 * GIB, processes=8)
    assert host.workers * (host.prefetch + 1) * batch <= 0.25 * 16 * GIB / 8 and host.workers >= 1
    # Docker's default 64 MB: no worker fits; the main process collates (nothing in /dev/shm)
    docker = choose_loader(8, None, batch, shm_free=64 * MIB, host_available=512 * GIB, processes=1)
    assert (docker.workers, docker.prefetch) == (0, 1)
    assert "0 worker(s)" in docker.line(8, 2) and "64" not in docker.line(8, 2).split("asked")[0][:3]


def test_the_shared_memory_check_says_what_to_do_in_one_line():
    line = shared_memory_refusal(8, None, 115 * MIB, 64 * MIB, 8)
    assert "/dev/shm has 64 MiB free for 8 process(es)" in line and "about 115 MiB" in line
    assert "docker run --shm-size=" in line and "--dataloader_num_workers 0" in line and "\n" not in line
    assert shared_memory_refusal(8, None, 115 * MIB, 64 * GIB, 8) is None
    assert shared_memory_refusal(0, None, 115 * MIB, 64 * MIB, 8) is None  # no worker, no shm
    assert shared_memory_refusal(8, None, 115 * MIB, None, 8) is None  # no /dev/shm here


def test_a_run_whose_batches_cannot_pass_through_shm_stops_before_any_work(job_argv, tmp_path, monkeypatch, capsys):
    from src.cli import train_main

    monkeypatch.setattr("src.preflight.shm_free_bytes", lambda: 64 * 1024)  # 64 KiB free
    experiment = tmp_path / "exp"
    assert train_main(job_argv(experiment, "--dataloader_num_workers", "4")) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # the image check's progress bar first
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]
    assert lines[-1].startswith("error: /dev/shm has 0 MiB free") and "--shm-size=" in lines[-1]
    assert not experiment.exists()


def test_the_trainer_and_the_encoder_take_the_workers_that_fit(tiny_qwen, small_train_split, tmp_path, monkeypatch):
    """One batch is collated in the process to measure it; shared memory for one batch ahead
    and no more leaves one worker with prefetch 1 (the loaders log it); the embeddings are
    those of a run without workers."""
    from test_trainer import hard_negative_dataset, trainer_args

    from src.data.collator import ContrastiveCollator
    from src.model.encoder import build_encoder
    from src.retrieval.encode import encode_rows, gallery_rows
    from src.trainer_iterative import IterativeTrainer

    encoder = build_encoder(tiny_qwen, dtype="float32")
    dataset = hard_negative_dataset(small_train_split)
    collator = ContrastiveCollator(encoder.processor, encoder.backbone)
    size = batch_bytes(collator([dataset[i] for i in range(4)]))
    monkeypatch.setattr(loader_memory, "shm_free_bytes", lambda path="/dev/shm": int(2.5 * size))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    args = trainer_args(tmp_path, dataloader_num_workers=3)
    trainer = IterativeTrainer(model=encoder, args=args, train_dataset=dataset, data_collator=collator)
    trainer._fit_workers_to_memory()
    assert (trainer.args.dataloader_num_workers, trainer.args.dataloader_prefetch_factor) == (1, 1)

    rows = gallery_rows(small_train_split, encoder.backbone.image_token)
    rows.names, rows.images, rows.texts = rows.names[:40], rows.images[:40], rows.texts[:40]
    report: dict = {}
    monkeypatch.setattr(loader_memory, "shm_free_bytes", lambda path="/dev/shm": 1)
    with_workers = encode_rows(encoder, rows, batch_size=16, num_workers=2, loader_report=report)
    assert report == {"workers": 0, "prefetch": None, "batches_collated_first": 1}
    assert (with_workers == encode_rows(encoder, rows, batch_size=16, num_workers=0)).all()
    monkeypatch.setattr(loader_memory, "shm_free_bytes", lambda path="/dev/shm": 2**40)
    report.clear()
    assert (encode_rows(encoder, rows, batch_size=16, num_workers=2, loader_report=report) == with_workers).all()
    assert report["workers"] == 2 and report["prefetch"] == 2
