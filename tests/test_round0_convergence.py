"""The round-0 convergence check's two rules: which sets are held out, and when more
steps stop helping."""

from __future__ import annotations

import json

from benchmarks.round0_convergence import converged_at, holdout_benchmark


def test_more_steps_stop_helping_at_the_first_checkpoint_no_later_one_beats_by_the_tolerance():
    rows = [{"steps": s, "avg": a} for s, a in ((10, 50.0), (20, 60.0), (30, 59.0), (40, 61.5), (50, 60.8))]
    assert converged_at(rows, tolerance=1.0) == 40  # 60.0 is beaten by 61.5 (+1.5); 61.5 by nothing
    assert converged_at(rows, tolerance=2.0) == 20  # 61.5 is within 2.0 of 60.0
    assert converged_at(rows[:1], tolerance=1.0) == 10


def write_cirr(root, sets: int) -> None:
    """A CIRR-format folder: `sets` image sets of two images, one triplet each."""
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "train").mkdir()
    captions, images = [], {}
    for i in range(sets):
        members = [f"train-{i}-a", f"train-{i}-b"]
        images |= {m: f"./train/{m}.png" for m in members}
        captions.append({"pairid": i, "reference": members[0], "target_hard": members[1], "caption": "x",
                         "target_soft": {members[1]: 1.0}, "img_set": {"id": i, "members": members}})  # fmt: skip
    (root / "captions" / "cap.rc2.train.json").write_text(json.dumps(captions))
    (root / "image_splits" / "split.rc2.train.json").write_text(json.dumps(images))
    (root / "captions" / "cap.rc2.test1.json").write_text("[]")
    (root / "image_splits" / "split.rc2.test1.json").write_text("{}")


def test_the_held_out_split_is_every_nth_whole_image_set(tmp_path):
    source, target = tmp_path / "source", tmp_path / "derived"
    write_cirr(source, sets=10)
    sizes = holdout_benchmark(source, target, every=5)
    assert sizes == {"train_triplets": 8, "holdout_triplets": 2, "holdout_images": 4}
    held = json.loads((target / "captions" / "cap.rc2.val.json").read_text())
    kept = json.loads((target / "captions" / "cap.rc2.train.json").read_text())
    assert [c["img_set"]["id"] for c in held] == [4, 9]
    held_images = set(json.loads((target / "image_splits" / "split.rc2.val.json").read_text()))
    kept_images = set(json.loads((target / "image_splits" / "split.rc2.train.json").read_text()))
    assert held_images == {"train-4-a", "train-4-b", "train-9-a", "train-9-b"}
    assert not held_images & kept_images and not held_images & {m for c in kept for m in c["img_set"]["members"]}
    assert (target / "train").is_symlink() and (target / "train").resolve() == (source / "train").resolve()
