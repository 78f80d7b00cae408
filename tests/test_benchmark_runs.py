"""The benchmark command runs end to end on a tiny configuration (no timing is asserted)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_writes_its_table(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_embeddings.py"), "--tables", "2",
           "--rows", "5000", "--dim", "16", "--batch", "64", "--iters", "1", "--rounds", "2", "--warmup", "1", "--batches", "1",
           "--variants", "baseline,nn_embeddingbag,qr_mult,hashed_block,dynamic_warm,dynamic_cold,dynamic_cold_grow",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vs baseline" in proc.stdout
    results = {r["variant"]: r for r in json.load(open(tmp_path / "bench_cpu.json"))["results"]}
    assert set(results) == {"baseline", "nn_embeddingbag", "qr_mult", "hashed_block", "dynamic_warm", "dynamic_cold",
                            "dynamic_cold_grow"}
    assert all(r["ids_per_s"] > 0 for r in results.values())
    # every variant's ratio comes from 2 rounds, each paired with a round of the baseline
    assert results["baseline"]["ratio"] == 1.0
    for name, r in results.items():
        if name != "baseline":
            assert len(r["ratio_rounds"]) == 2 and all(x > 0 for x in r["ratio_rounds"])
            assert min(r["ratio_rounds"]) <= r["ratio"] <= max(r["ratio_rounds"])
    full = 2 * 5000 * 16 * 4
    assert results["baseline"]["table_bytes"] == full == results["nn_embeddingbag"]["table_bytes"]
    # QR with m = 1000 over 5000 ids: a 5-row quotient table and a 1000-row remainder table
    assert results["qr_mult"]["table_bytes"] == 2 * (5 + 1000) * 16 * 4
    assert results["hashed_block"]["table_bytes"] < full / 5
    # a warm dynamic table holds the ids its batch brought (at most 2 x 64 x 8), not 5000 rows;
    # a cold one also the ids of every timed step
    assert 0 < results["dynamic_warm"]["table_bytes"] <= 2 * 64 * 8 * (16 * 4 + 8)
    assert results["dynamic_cold"]["table_bytes"] > results["dynamic_warm"]["table_bytes"]
    # dynamic_cold reserves rows up front and dynamic_cold_grow does not: the same ids
    # leave the same rows behind
    assert results["dynamic_cold_grow"]["table_bytes"] == results["dynamic_cold"]["table_bytes"]
    assert (tmp_path / "bench_cpu.png").exists()
    # the bandwidth bound: the least traffic of a training step (rows read, then read and
    # written by the update; ids; pooled output and its gradient) over the step's time
    ids, pooled = 2 * 64 * 8, 2 * 64 * 16 * 4
    for r in results.values():
        assert r["bytes_per_step"] == 3 * ids * 16 * 4 + ids * 8 + 2 * pooled
        assert r["bytes_per_s"] == pytest.approx(r["bytes_per_step"] / (r["step_ms"] / 1e3))
        assert r["copy_bytes_per_s"] > 1e8
        assert r["of_copy_bandwidth"] == pytest.approx(r["bytes_per_s"] / r["copy_bytes_per_s"])


def test_peers_hold_what_their_variant_holds_and_give_its_ratio(tmp_path):
    """The peers a user would pick instead: an EBC of a compressed variant's bytes, and
    TorchRec's managed-collision EBC for a dynamic table; `vs peer` = the two ratios'
    quotient (fields and formulas only, no timing asserted)."""
    variants = ["baseline", "qr_mult", "std_eq_qr_mult", "hashed_element", "std_eq_hashed_element",
                "dynamic_warm", "mch", "mch_cold"]
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_embeddings.py"), "--tables", "2",
           "--rows", "5000", "--dim", "16", "--batch", "64", "--iters", "1", "--rounds", "1", "--warmup", "1",
           "--batches", "1", "--variants", ",".join(variants), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vs peer" in proc.stdout
    results = {r["variant"]: r for r in json.load(open(tmp_path / "bench_cpu.json"))["results"]}
    row = 16 * 4
    for v in ("qr_mult", "hashed_element"):
        peer = results[f"std_eq_{v}"]
        # the same bytes, to a row per table
        assert 0 <= results[v]["table_bytes"] - peer["table_bytes"] < 2 * row
        assert results[v]["peer"] == f"std_eq_{v}"
        assert results[v]["vs_peer"] == pytest.approx(results[v]["ratio"] / peer["ratio"])
    assert results["qr_mult"]["table_bytes"] == 2 * (5 + 1000) * row
    d = results["dynamic_warm"]
    assert d["peer"] == "mch" and d["vs_peer"] == pytest.approx(d["ratio"] / results["mch"]["ratio"])
    # the MC-EBC holds a full table of --rows rows, and its remap state besides
    assert results["mch"]["table_bytes"] >= 2 * 5000 * row
    for name in ("baseline", "mch", "mch_cold"):
        assert results[name]["vs_peer"] is None


def test_benchmark_times_the_forward_pass_alone(tmp_path):
    """--step forward times the pooled lookup only, and the bandwidth bound counts the
    forward pass's traffic: rows read, ids, pooled output."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_embeddings.py"), "--tables", "2",
           "--rows", "5000", "--dim", "16", "--batch", "64", "--iters", "1", "--rounds", "1", "--warmup", "1",
           "--batches", "1", "--variants", "baseline,hashed_block", "--step", "forward", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step: forward" in proc.stdout
    results = {r["variant"]: r for r in json.load(open(tmp_path / "bench_cpu.json"))["results"]}
    ids = 2 * 64 * 8
    for r in results.values():
        assert r["step"] == "forward"
        assert r["bytes_per_step"] == ids * 16 * 4 + ids * 8 + 2 * 64 * 16 * 4


def test_hash_table_benchmark_runs(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_hash_table.py"), "--keys", "20000",
           "--batch", "4096", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.load(open(tmp_path / "bench_hash_table_cpu.json"))
    assert r["final_size"] >= 20000 and r["insert_keys_per_s"] > 0 and r["find_keys_per_s"] > 0
    assert r["dim"] == 8 and r["find_values_keys_per_s"] > 0


def test_soak_short_form_holds_capacity_statistics_memory_and_checkpoint(tmp_path):
    """benchmarks/soak.py in its short form: both tables reach capacity during warm-up
    (so eviction runs for most of the steps); the command's own checks pass (exit 0) and
    its JSON shows what they checked."""
    cap = 5000
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "soak.py"), "--steps", "1200", "--check-every", "100",
           "--warmup", "0.25", "--capacity", str(cap), "--dim", "16", "--batch", "256", "--window", "200000",
           "--drift", "20", "--ttl", "50", "--delta-window", "100", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.load(open(tmp_path / "soak.json"))
    assert r["failures"] == [] and "checkpoint reload identical" in proc.stdout
    samples = r["samples"]
    assert len(samples) == 12 and samples[-1]["step"] == 1200
    for name in ("lfu", "ttl"):
        after = [s for s in samples if s["step"] > 300]
        assert all(s[f"{name}_size"] <= cap for s in samples)
        assert all(s[f"{name}_admitted"] - s[f"{name}_evicted"] == s[f"{name}_size"] for s in samples)
        assert after[-1][f"{name}_evicted"] > after[0][f"{name}_evicted"] > 0  # evicting all along
    assert samples[3]["lfu_size"] == cap  # at capacity by the end of warm-up
    assert abs(r["rss_growth"]) <= 0.05
