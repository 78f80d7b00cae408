"""The main job end to end: DLRM on generated Criteo-layout data, 2 processes, through
TorchRec's TrainPipelineSparseDist; and a job killed mid-run that resumes from its last
complete checkpoint, on the same or another number of processes."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "dlrm_main.py")


def run(tmp, *args):
    cmd = [sys.executable, SCRIPT, "--out", str(tmp), "--threads", "2", "--eval-batches", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-4000:]
    return proc.stdout


def results(tmp, variant):
    with open(os.path.join(tmp, f"dlrm_{variant}.json")) as f:
        return json.load(f)


def test_trains_and_prints_the_comparison_table(tmp_path):
    out = run(tmp_path, "--variants", "full,qr", "--steps", "200")
    assert "embedding MB" in out and "test AUC" in out
    assert any(line.startswith("full") for line in out.splitlines())
    assert any(line.startswith("qr") for line in out.splitlines())
    for variant in ("full", "qr"):
        losses = results(tmp_path, variant)["losses"]
        assert len(losses) == 200
        assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 0.01, (variant, losses[:20], losses[-20:])
    full, qr = results(tmp_path, "full"), results(tmp_path, "qr")
    assert qr["embedding_bytes"] * 4 <= full["embedding_bytes"]
    assert (tmp_path / "dlrm_results.json").exists() and (tmp_path / "dlrm_auc_vs_memory.png").exists()


def saved_tables(path):
    """A checkpoint as name -> tensor, read back without a process group (a dynamic table's
    KeyedRows as its fields: keys sorted, values, optimizer state and metadata per key)."""
    import dataclasses

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from torchrec_ext.modules.dynamic.rows import KeyedRows

    flat = path + ".pt"
    dcp_to_torch_save(path, flat)
    out = {}
    for name, v in torch.load(flat, weights_only=False).items():
        if isinstance(v, KeyedRows):
            for field in dataclasses.fields(v):
                item = getattr(v, field.name)
                for k, t in (item.items() if isinstance(item, dict) else [("", item)]):
                    out[f"{name}.{field.name}.{k}"] = t
        else:
            out[name] = v
    return out


def assert_same_tables(a, b):
    import torch

    assert a.keys() == b.keys()
    assert any(".keys." in n for n in a) and any("weight" in n for n in a)  # all three kinds held
    for name in a:
        if torch.is_tensor(a[name]):
            assert torch.equal(a[name], b[name]), name
        else:
            assert a[name] == b[name], name


def test_a_killed_rank_resumes_from_the_last_complete_checkpoint(tmp_path):
    """All three kinds in one model (the "mixed" variant), 2 processes, checkpoints every 4
    steps; rank 1 is SIGKILLed after step 9. The restart loads step 8 and ends where a run
    that was never killed ends: same losses, same tables, same test metrics; on 1 process too."""
    common = ["--variants", "mixed", "--steps", "12", "--batch-size", "512"]
    ck_a, ck = str(tmp_path / "ck_a"), str(tmp_path / "ck")
    run(tmp_path / "a", *common, "--save", ck_a)
    cmd = [sys.executable, SCRIPT, "--out", str(tmp_path / "b"), "--threads", "2", "--eval-batches", "2",
           *common, "--save", ck, "--save-every", "4", "--fault-sigkill", "1:9"]
    killed = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-2000:]
    assert sorted(os.listdir(ck)) == ["step_00000004", "step_00000008"]

    out = run(tmp_path / "c", *common, "--resume", ck, "--save", ck)
    assert "resumed from" in out and "step_00000008" in out
    a, c = results(tmp_path / "a", "mixed"), results(tmp_path / "c", "mixed")
    assert c["start_step"] == 8 and len(c["losses"]) == 4
    for x, y in zip(c["losses"], a["losses"][8:]):
        assert abs(x - y) < 1e-6, (c["losses"], a["losses"][8:])
    assert abs(c["auc"] - a["auc"]) < 1e-6 and abs(c["logloss"] - a["logloss"]) < 1e-6
    assert_same_tables(saved_tables(os.path.join(ck, "step_00000012")),
                       saved_tables(os.path.join(ck_a, "step_00000012")))

    # the same checkpoint on another number of processes
    run(tmp_path / "d", *common, "--resume", os.path.join(ck, "step_00000008"), "--world-size", "1")
    d = results(tmp_path / "d", "mixed")
    assert d["start_step"] == 8 and d["world_size"] == 1
    for x, y in zip(d["losses"], a["losses"][8:]):
        assert abs(x - y) < 1e-4, (d["losses"], a["losses"][8:])
    # (AUC is left out: 12 steps leave the model near chance, where float-order noise
    # reorders predictions; the log loss averages them)
    assert abs(d["logloss"] - a["logloss"]) < 1e-4


def test_criteo_tsv_reader_streams_global_batches(tmp_path):
    import math

    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from criteo_data import VOCAB, CriteoTSV

    lines = []
    for i in range(10):
        dense = [str(i * j) if j % 3 else "" for j in range(13)]  # empty fields allowed
        cats = [format((i * 7919 + j) * 2654435761 % 2**32, "08x") if j != 5 else "" for j in range(26)]
        lines.append("\t".join([str(i % 2)] + dense + cats))
    path = tmp_path / "day.tsv"
    path.write_text("\n".join(lines) + "\n")
    raw = [j == 0 for j in range(26)]
    reader = CriteoTSV([str(path)], global_batch=4, raw_ids=raw)
    got = list(reader.batches(rank=1, world_size=2, start=1, steps=5))
    assert len(got) == 1  # 10 lines: global batches 0 and 1 (2 lines of the last dropped); from step 1
    b = got[0]
    rows = [4 + 2, 4 + 3]  # rank 1's half of global batch 1
    assert b.labels.tolist() == [float(r % 2) for r in rows]
    assert math.isclose(float(b.dense_features[0, 4]), math.log1p(rows[0] * 4), rel_tol=1e-6)
    assert float(b.dense_features[0, 3]) == 0.0  # empty field
    kjt = b.sparse_features.to_dict()
    cat = lambda i, j: (i * 7919 + j) * 2654435761 % 2**32  # noqa: E731
    assert kjt["cat_0"].values().tolist() == [cat(r, 0) for r in rows]  # raw (dynamic table)
    assert kjt["cat_1"].values().tolist() == [cat(r, 1) % VOCAB[1] for r in rows]
    assert kjt["cat_5"].values().tolist() == [0, 0]  # empty categorical
