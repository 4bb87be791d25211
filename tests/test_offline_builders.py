"""The offline assets are built once even when several processes ask for them at once."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from src.offline.builders import build_once


def _slow_build(folder: Path) -> None:
    """Writes a file and leaves a mark per build in the parent folder, slowly enough that
    the other processes arrive while it runs."""
    folder.mkdir()
    (folder.parent / f"built_by_{multiprocessing.current_process().pid}").touch()
    time.sleep(0.5)
    (folder / "asset.txt").write_text("done")


def _ask(target: str) -> str:
    return str(build_once(Path(target), _slow_build))


def test_several_processes_asking_at_once_build_the_asset_once(tmp_path):
    target = tmp_path / "asset"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        answers = pool.map(_ask, [str(target)] * 4)
    assert answers == [str(target)] * 4
    assert len(list(tmp_path.glob("built_by_*"))) == 1
    assert (target / "asset.txt").read_text() == "done"
    assert not target.with_name("asset.partial").exists()


def test_an_interrupted_build_is_redone_not_used(tmp_path):
    target = tmp_path / "asset"
    partial = target.with_name("asset.partial")
    partial.mkdir()
    (partial / "half_written").touch()
    assert build_once(target, _slow_build) == target
    assert sorted(p.name for p in target.iterdir()) == ["asset.txt"]
