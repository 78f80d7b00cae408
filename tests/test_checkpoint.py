"""Atomic, verified checkpoints (torchrec_ext.sharding.checkpoint), in one process: a save
is complete or ignored, and a damaged one raises naming the damage and loads nothing.
The multi-rank cases: tests/test_distributed.py (torn_checkpoint) and the killed-rank
restart in tests/test_dlrm_example.py."""

import os

import pytest
import torch

from torchrec_ext.sharding import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint


def state(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {"table.weight": torch.randn(50, 8, generator=g), "bias": torch.randn(3, generator=g),
            "step": torch.tensor(seed)}


def blank():
    return {k: torch.zeros_like(v) for k, v in state(0).items()}


def data_file(path):
    return next(os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".distcp"))


def test_save_commits_a_step_folder_that_loads_back(tmp_path):
    path = save_checkpoint(state(3), str(tmp_path), step=3)
    assert path == str(tmp_path / "step_00000003") and os.path.isfile(os.path.join(path, "manifest.json"))
    assert latest_checkpoint(str(tmp_path)) == path
    loaded = blank()
    assert load_checkpoint(loaded, str(tmp_path)) == path  # the root: its newest checkpoint
    for k, v in state(3).items():
        assert torch.equal(loaded[k], v), k


def test_keep_holds_the_newest_and_the_newest_wins(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(state(step), str(tmp_path), step=step, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["step_00000002", "step_00000003"]
    loaded = blank()
    load_checkpoint(loaded, str(tmp_path))
    assert torch.equal(loaded["table.weight"], state(3)["table.weight"])
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(state(4), str(tmp_path), step=4, keep=0)


def test_a_save_cut_short_is_ignored_then_cleared(tmp_path):
    good = save_checkpoint(state(1), str(tmp_path), step=1)
    # a process killed mid-save: files written, never sealed
    import torch.distributed.checkpoint as dcp

    dcp.save(state(2), checkpoint_id=str(tmp_path / "step_00000002.partial"))
    os.makedirs(tmp_path / "step_00000005")  # and a folder that only looks like a checkpoint
    assert latest_checkpoint(str(tmp_path)) == good
    loaded = blank()
    load_checkpoint(loaded, str(tmp_path))
    assert torch.equal(loaded["table.weight"], state(1)["table.weight"])
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        load_checkpoint(blank(), str(tmp_path / "step_00000005"))
    save_checkpoint(state(3), str(tmp_path), step=3)
    assert not any(n.endswith(".partial") for n in os.listdir(tmp_path))


@pytest.mark.parametrize("damage", ["truncated", "missing", "altered", "manifest"])
def test_a_damaged_checkpoint_raises_naming_the_file_and_loads_nothing(tmp_path, damage):
    path = save_checkpoint(state(1), str(tmp_path), step=1)
    victim = data_file(path)
    if damage == "truncated":
        with open(victim, "r+b") as f:
            f.truncate(os.path.getsize(victim) // 2)
        expect = "truncated"
    elif damage == "missing":
        os.remove(victim)
        expect = "missing"
    elif damage == "altered":
        with open(victim, "r+b") as f:
            f.seek(os.path.getsize(victim) // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
        expect = "CRC32"
    else:
        with open(os.path.join(path, "manifest.json"), "w") as f:
            f.write("{not json")
        victim, expect = os.path.join(path, "manifest.json"), "unreadable"
    loaded = blank()
    with pytest.raises(CheckpointError, match=expect) as e:
        load_checkpoint(loaded, path)
    assert os.path.basename(victim) in str(e.value)
    for k, v in blank().items():
        assert torch.equal(loaded[k], v), k  # nothing loaded


def test_an_empty_root_raises(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(blank(), str(tmp_path))
