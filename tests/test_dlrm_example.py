"""The main job end to end: DLRM on generated Criteo-layout data, 2 processes, through
TorchRec's TrainPipelineSparseDist; and a checkpoint that resumes on another world size."""

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


def test_resume_on_another_number_of_processes_continues_from_the_same_loss(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    # uninterrupted: 16 steps on 2 processes
    run(tmp_path / "a", "--variants", "dynamic", "--steps", "16", "--batch-size", "512")
    # 10 steps on 2 processes, saved; then resumed on 1 process up to step 16
    run(tmp_path / "b", "--variants", "dynamic", "--steps", "10", "--batch-size", "512", "--save", ckpt)
    run(tmp_path / "c", "--variants", "dynamic", "--steps", "16", "--batch-size", "512", "--resume", ckpt,
        "--world-size", "1")
    a, b, c = results(tmp_path / "a", "dynamic"), results(tmp_path / "b", "dynamic"), results(tmp_path / "c", "dynamic")
    assert c["start_step"] == 10 and c["world_size"] == 1 and len(c["losses"]) == 6
    for x, y in zip(b["losses"], a["losses"][:10]):
        assert abs(x - y) < 1e-6
    for x, y in zip(c["losses"], a["losses"][10:]):
        assert abs(x - y) < 1e-4, (c["losses"], a["losses"][10:])


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
