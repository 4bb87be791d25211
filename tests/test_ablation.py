"""The ablation: confidence intervals on hand-made numbers, and arms that differ only in
what they should (read from their experiment_config.json files)."""

from __future__ import annotations

import json
import math
import os

import ablation_stand_ins as stand_ins
import pytest

import benchmarks.ablation as ablation
from benchmarks.ablation import (
    REFINE,
    add_earlier_results,
    confidence_interval,
    holm,
    main,
    paired_p_value,
    prediction_interval,
    seeds_to_resolve,
    summarise,
)
from benchmarks.analyse_texts import analyse
from benchmarks.manipulation_check import check as manipulation_check
from src.data.loading import load_split
from src.experiment import Experiment
from src.experiment_io import read_json

# What each arm may change, beyond round 0's arguments (the flags of ARMS).
ARM_KEYS = {"num_hard_negatives", "foundation_model_backbone", "negative_source",
            "mining_checkpoint", "augment_negatives", "consistency_filter", "max_steps",
            "augment_selection", *(flag.removeprefix("--") for flag in REFINE if flag.startswith("--"))}  # fmt: skip
TESTED_ARMS = ("A", "B", "C", "S", "D", "E", "Dsim", "Dcons", "Depoch", "RC", "RD", "RDfile")


def test_confidence_interval_on_hand_made_numbers():
    mean, low, high = confidence_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd = sqrt(2.5); t(0.975, 4) = 2.7764451; half width = 2.7764451 * sqrt(2.5) / sqrt(5)
    assert mean == 3.0
    assert high - mean == pytest.approx(2.7764451 * math.sqrt(2.5 / 5), abs=1e-6)
    assert mean - low == pytest.approx(high - mean)
    assert math.isnan(confidence_interval([2.0])[1])


def test_paired_differences_are_paired_by_seed():
    def metrics(value):
        return {"iter_1": {m: value for m in ("recall@1", "recall@5", "recall@10", "recall_subset@1", "recall_subset@2", "avg")}}

    results = {"C": {0: metrics(50.0), 1: metrics(60.0), 2: metrics(70.0)},
               "B": {0: metrics(49.0), 1: metrics(58.0), 2: metrics(67.0)}}  # fmt: skip
    summary = summarise(results)
    difference = summary["differences"]["C-B"]["iter_1"]["recall@1"]
    assert difference["mean"] == pytest.approx(2.0) and difference["n"] == 3
    # the differences 1, 2, 3: sd 1, t(0.975, 2) = 4.3026527
    assert difference["ci95"][1] - 2.0 == pytest.approx(4.3026527 / math.sqrt(3), abs=1e-6)
    assert summary["arms"]["C"]["iter_1"]["recall@1"]["sd"] == pytest.approx(10.0)


def test_seeds_of_an_earlier_run_join_only_with_the_same_flags_and_arms(tmp_path):
    earlier = tmp_path / "ablation.json"
    earlier.write_text(json.dumps({
        "flags": ["--max_steps", "157"], "arms": {"B": "", "C": ""}, "seeds": [0, 1],
        "results": {"B": {"0": {"iter_1": {"avg": 1.0}}, "1": {"iter_1": {"avg": 2.0}}},
                    "C": {"0": {"iter_1": {"avg": 3.0}}, "1": {"iter_1": {"avg": 4.0}}}},
    }))  # fmt: skip
    now = {"B": {1: {"iter_1": {"avg": 20.0}}, 2: {"iter_1": {"avg": 5.0}}},
           "C": {1: {"iter_1": {"avg": 40.0}}, 2: {"iter_1": {"avg": 6.0}}}}  # fmt: skip
    results, seeds = add_earlier_results(now, [1, 2], earlier, ["--max_steps", "157"], ["C", "B"])
    assert seeds == [0, 1, 2]
    assert {seed: runs["iter_1"]["avg"] for seed, runs in results["C"].items()} == {1: 40.0, 2: 6.0, 0: 3.0}
    with pytest.raises(SystemExit, match="--add_results .*made with flags"):
        add_earlier_results(now, [1, 2], earlier, ["--max_steps", "100"], ["C", "B"])
    with pytest.raises(SystemExit, match="arms"):
        add_earlier_results(now, [1, 2], earlier, ["--max_steps", "157"], ["C", "B", "D"])


def test_seeds_to_resolve_follow_the_measured_spread():
    # mean 1, sd sqrt(16/3) = 2.309 over 4 seeds: unresolved; the half width t(n-1) * sd / sqrt(n)
    # falls below the mean at n = 23: t(0.975, 21) = 2.0796 gives 1.024 at 22, t(0.975, 22) =
    # 2.0739 gives 0.998 at 23
    values = [3.0, -1.0, 3.0, -1.0]
    assert seeds_to_resolve(values) == 23
    assert seeds_to_resolve([1.0, 1.1, 0.9]) is None  # resolved already
    assert seeds_to_resolve([1.0, -1.0]) is None  # a zero mean never resolves


def test_a_failed_seed_does_not_lose_the_others(tmp_path, monkeypatch):
    def fake_round0(seed, flags, output, threads, round0_flags):
        if seed == 1:
            raise RuntimeError("round 0 of seed 1 failed")

    def fake_arm(seed, arm, flags, output, threads):
        if (seed, arm) == (2, "C"):
            raise RuntimeError("arm C, seed 2 failed")
        return {"results": {"iter_0": {m: 50.0 + seed for m in ablation.METRICS}}, "steps": {}, "texts": {}}

    monkeypatch.setattr(ablation, "run_round0", fake_round0)
    monkeypatch.setattr(ablation, "run_arm", fake_arm)
    output = tmp_path / "out"
    with pytest.raises(SystemExit, match="seed 1 failed.*seed 2 failed"):
        main(["--seeds", "0,1,2,3", "--arms", "B,C", "--output_dir", str(output),
              "--", "--max_steps", "2"])  # fmt: skip
    payload = json.loads((output / "ablation.json").read_text())
    assert payload["seeds"] == [0, 3] and list(payload["failed"]) == ["1", "2"]
    assert payload["results"]["B"] == {"0": fake_arm(0, "B", [], None, 1)["results"],
                                       "3": fake_arm(3, "B", [], None, 1)["results"]}  # fmt: skip
    assert (output / "ablation.md").is_file()


def test_with_several_jobs_every_run_has_its_own_process(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, "run_round0", stand_ins.no_round0)
    monkeypatch.setattr(ablation, "run_arm", stand_ins.process_of_this_run)
    monkeypatch.setenv(stand_ins.METRICS_ENV, ",".join(ablation.METRICS))
    output = tmp_path / "out"
    main(["--seeds", "0,1", "--jobs", "2", "--arms", "B", "--keep_experiments", "--output_dir", str(output),
          "--", "--max_steps", "2"])  # fmt: skip
    texts = json.loads((output / "ablation.json").read_text())["texts"]["B"]
    pids = {texts[s]["pid"] for s in ("0", "1")}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {texts[s]["threads"] for s in ("0", "1")} == {max(1, (os.cpu_count() or 1) // 2)}


def test_holm_and_prediction_intervals_on_hand_made_numbers():
    # Holm over three p-values 0.01, 0.04, 0.03: sorted 0.01 x 3, 0.03 x 2, 0.04 x 1, made monotone
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm({"a": 0.5, "b": float("nan")}) == {"a": 0.5}
    # differences 1, 2, 3: mean 2, sd 1; t(0.975, 2) = 4.3026527; another run of 3 seeds:
    # 2 +- 4.3026527 * sqrt(2 / 3)
    low, high = prediction_interval([1.0, 2.0, 3.0])
    assert high - 2.0 == pytest.approx(4.3026527 * math.sqrt(2 / 3), abs=1e-6)
    assert 2.0 - low == pytest.approx(high - 2.0)
    # t = 2 / (1 / sqrt(3)) = 3.4641 with 2 degrees of freedom: two-sided p = 0.07418
    assert paired_p_value([1.0, 2.0, 3.0]) == pytest.approx(0.07418, abs=1e-4)


def test_the_primary_comparison_is_tested_alone_and_the_rest_holm_corrected():
    def metrics(value):
        return {"iter_1": {m: value for m in ablation.METRICS}}

    base = [50.0, 60.0, 70.0, 65.0]
    results = {
        "RC": {s: metrics(v) for s, v in enumerate(base)},
        "RD": {s: metrics(v + d) for s, (v, d) in enumerate(zip(base, [1.0, 2.0, 3.0, 2.5], strict=True))},
        "RDfile": {s: metrics(v + d) for s, (v, d) in enumerate(zip(base, [0.5, -0.5, 1.0, 0.0], strict=True))},
    }
    tests = summarise(results, primary="RD-RC")["tests"]
    assert tests["primary"]["comparison"] == "RD-RC" and tests["primary"]["significant"]
    assert set(tests["holm"]) == {"RD-RDfile", "RDfile-RC"}
    p = {name: test["p"] for name, test in tests["holm"].items()}
    assert tests["holm"] == {name: {"p": p[name], "p_holm": adjusted, "significant": adjusted < 0.05}
                             for name, adjusted in holm(p).items()}  # fmt: skip


@pytest.mark.slow
def test_the_arms_differ_only_in_what_they_should(tiny_qwen, small_benchmark, tmp_path):
    output = main([
        "--seeds", "3", "--output_dir", str(tmp_path / "ablation"), "--keep_experiments",
        "--arms", ",".join(TESTED_ARMS), "--",
        "--model_name", str(tiny_qwen), "--dataset_path", str(small_benchmark),
        "--foundation_model_backbone", "scene_oracle", "--num_iterations", "1", "--max_steps", "2",
        "--batch_size", "4", "--dataloader_num_workers", "0", "--mine_scope", "all",
    ])  # fmt: skip
    records = {arm: Experiment(output / "experiments" / "seed3" / arm).config.record() for arm in TESTED_ARMS}
    configs = {arm: record.result_config for arm, record in records.items()}
    # a Trainer field at its recorded default (Depoch's max_steps -1) is not in the result config
    steps = {arm: configs[arm].get("max_steps", records[arm].trainer_defaults["max_steps"]) for arm in TESTED_ARMS}
    shared = {key: value for key, value in configs["D"].items() if key not in ARM_KEYS}
    for arm, config in configs.items():
        assert {k: v for k, v in config.items() if k not in ARM_KEYS} == shared, arm
        assert config["seed"] == 3 and steps[arm] == (-1 if arm == "Depoch" else 2)
        assert config["dataset_path"] == str(small_benchmark.resolve())
        assert config["num_hard_negatives"] == (0 if arm == "A" else 1), arm
    assert configs["B"]["negative_source"] == "random" and configs["C"]["negative_source"] == "mined"
    assert configs["S"]["mining_checkpoint"] == "first" and configs["C"]["mining_checkpoint"] == "previous"
    assert configs["E"]["augment_negatives"] == "random" and configs["D"]["augment_negatives"] == "mined"
    assert configs["D"]["foundation_model_backbone"] == "scene_oracle"
    assert all(configs[arm]["foundation_model_backbone"] == "none" for arm in "ABCS")
    assert all(configs[arm]["foundation_model_backbone"] == "simulated_captioner" for arm in ("Dsim", "Dcons", "Depoch"))
    assert configs["Dcons"]["consistency_filter"] and not configs["Dsim"]["consistency_filter"]
    for arm in ("RC", "RD", "RDfile"):  # the refinement regime, and nothing else, beside C or D
        assert configs[arm]["lr_scheduler_type"] == "cosine" and configs[arm]["triplet_loss_weight"] == 0.25
        assert configs[arm]["augmented_pool"] == "cumulative" and configs[arm]["group_by_reference"]
        assert configs[arm]["foundation_model_backbone"] == configs["C" if arm == "RC" else "D"]["foundation_model_backbone"]
    # C at the default schedule (a Trainer field at its recorded default is left out) and no triplet term
    assert "lr_scheduler_type" not in configs["C"] and "triplet_loss_weight" not in configs["C"]
    assert records["C"].trainer_defaults["lr_scheduler_type"] == "constant_with_warmup"
    assert configs["RDfile"]["augment_selection"] == "file_order" and "augment_selection" not in configs["RD"]
    selected = read_json(output / "experiments" / "seed3" / "RD" / "augmented_samples_iter_1.json")["stats"]
    assert selected["selection"] == "failures" and selected["pairs"] == min(selected["pairs_available"], 1000)
    payload = json.loads((output / "ablation.json").read_text())
    assert sorted(payload["results"]) == sorted(TESTED_ARMS)
    assert {"C-B", "C-S", "D-C", "D-E", "Dsim-C", "D-Dsim", "Dcons-Dsim", "Depoch-C", "RD-RC", "RD-RDfile",
            "RDfile-RC"} == set(payload["summary"]["differences"])  # fmt: skip
    assert payload["steps"]["Dsim"]["3"] == {"iter_0": 2, "iter_1": 2}
    assert payload["steps"]["Depoch"]["3"]["iter_1"] > 2  # one epoch over original + new triplets
    texts = payload["texts"]["Dcons"]["3"]["iter_1"]
    assert texts["kept"] <= texts["pairs"] and set(texts["filters"]) == {"clean-up rules", "consistency filter"}
    assert (output / "ablation.md").is_file() and (output / "ablation_recall_at_5.png").is_file()
    mined = read_json(output / "experiments" / "seed3" / "S" / "hard_negatives_iter_0.json")
    assert mined["meta"]["checkpoint_fingerprint"] == read_json(
        output / "experiments" / "seed3" / "S" / "checkpoint_iter_0" / "stage.json"
    )["fingerprint"]
    # The manipulation check (benchmarks/manipulation_check.py) reads the kept experiments.
    checked = manipulation_check(output, "RD", "RC")["rounds"]["1"]
    kept = read_json(output / "experiments" / "seed3" / "RD" / "augmented_samples_iter_1.json")["samples"]
    assert checked["new text"]["per_seed"]["queries"] == [len(kept)]
    assert checked["original text"]["per_seed"]["queries"] == [len({s["source_pairid"] for s in kept})]
    assert all(0 <= v <= 100 for side in checked.values() for v in side["per_seed"]["treated"])
    same = manipulation_check(output, "RD", "RD")["rounds"]["1"]
    assert [side["difference"]["mean"] for side in same.values()] == [0.0, 0.0]
    # What the new texts teach (benchmarks/analyse_texts.py) reads the kept experiments.
    report = analyse(output, ["C", "Dsim", "Dcons"], 1)
    assert report["triplets_seen"]["C"]["1"] == {"original": 8.0, "new": 0.0}  # 2 steps x 4
    new = read_json(output / "experiments" / "seed3" / "Dsim" / "augmented_samples_iter_1.json")["samples"]
    originals = len(load_split("cirr", small_benchmark, "train").triplets)
    seen = report["triplets_seen"]["Dsim"]["1"]
    assert seen["new"] == pytest.approx(8 * len(new) / (originals + len(new)))
    assert seen["original"] + seen["new"] == pytest.approx(8)
    assert report["quality"]["Dsim"]["1"] == pytest.approx(
        sum(sample["simulation"]["correct"] for sample in new) / len(new)
    )
    assert sum(report["texts"]["Dsim"].values()) == pytest.approx(1.0)
    assert set(report["gain_by_kind"]) == {"Dsim", "Dcons"} and "recolour" in report["kinds"]
    stats = read_json(output / "experiments" / "seed3" / "Dcons" / "augmented_samples_iter_1.json")["stats"]
    consistency = stats["filters"]["consistency filter"]
    assert dict(report["filters"]["Dcons"]["consistency filter"]) == {
        key: consistency[key] for key in ("wrong_in", "right_in", "wrong_removed", "right_removed")
    }
    assert report["filters"]["Dcons"]["negatives dropped as false negatives"]["count"] == stats["false_negatives"]
    assert set(report["filters"]["C"]) == {"negatives dropped as false negatives"}  # no texts, no filters


def test_a_round0_killed_part_way_is_continued_not_refused(tmp_path, monkeypatch):
    """An invocation killed during a seed's round 0 leaves its folder; the next one must
    continue it (the experiment refuses a second start in the same folder)."""
    argvs: list[list[str]] = []
    monkeypatch.setattr(ablation, "train_main", lambda argv: argvs.append(argv) or 0)
    (tmp_path / "experiments" / "seed4" / "round0").mkdir(parents=True)  # killed part-way
    ablation.run_round0(4, ["--max_steps", "2"], tmp_path, 1, [])
    ablation.run_round0(5, ["--max_steps", "2"], tmp_path, 1, [])  # a fresh seed
    assert "--auto_resume" in argvs[0] and "--auto_resume" not in argvs[1]
    assert argvs[0][argvs[0].index("--experiment_dir") + 1] == str(tmp_path / "experiments" / "seed4" / "round0")
