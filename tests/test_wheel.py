"""`pip wheel .` gives a wheel that holds the compiled ops; installed into a fresh venv,
torchrec_ext imports and trains each variant with no compiler on PATH and a read-only
package directory (so nothing is built or written at import)."""

import glob
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USE = r"""
import os, sys, torch
import torchrec_ext as trx
from torchrec import KeyedJaggedTensor
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec_ext.ops import _native

assert os.path.dirname(trx.__file__).startswith(sys.argv[1]), trx.__file__
print("isa", _native.load())
kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([1, 5, 7, 5]), torch.tensor([2, 2]))
cfg = dict(name="t", num_embeddings=1000, embedding_dim=8, feature_names=["f"])
for ebc in (trx.HashedEmbeddingBagCollection([trx.HashedEmbeddingBagConfig(**cfg, mode="block", compression=0.1)]),
            trx.HashedEmbeddingBagCollection([trx.HashedEmbeddingBagConfig(**cfg, mode="element", compression=0.1)]),
            trx.QREmbeddingBagCollection([trx.QREmbeddingBagConfig(**cfg, num_collisions=10)])):
    out = ebc(kjt)["f"]
    out.sum().backward()
    w = next(iter(ebc.parameters()))
    assert out.shape == (2, 8) and w.grad is not None and bool(w.grad.abs().sum() > 0)
dyn = trx.DynamicEmbeddingBagCollection([trx.DynamicEmbeddingBagConfig(**cfg)],
                                        fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.1})
dyn(kjt)["f"].sum().backward()
assert dyn.table_size("t") == 3
print("variants ok")
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="building the wheel needs a compiler")
def test_wheel_installs_and_runs_without_a_compiler(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                            "-w", str(dist), REPO], capture_output=True, text=True, timeout=1500)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = glob.glob(str(dist / "torchrec_ext-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("torchrec_ext/_C_default") and n.endswith(".so") for n in names), names
    assert "torchrec_ext/_native_build.json" in names
    assert not any("/csrc/" in n or "/_build/" in n for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    zipfile.ZipFile(wheel).extractall(site)
    # torch, torchrec and fbgemm come from the test's own environment (its .pth files are
    # not read from there, so the checkout is not on the path)
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    pkg = os.path.join(site, "torchrec_ext")
    for root, dirs, files in os.walk(pkg):
        for p in dirs + files:
            os.chmod(os.path.join(root, p), os.stat(os.path.join(root, p)).st_mode & ~0o222)
    os.chmod(pkg, os.stat(pkg).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = sorted(os.listdir(pkg))
    env = {"PATH": str(tmp_path / "empty-bin"), "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        run = subprocess.run([py, "-c", USE, site], capture_output=True, text=True, cwd=str(tmp_path), env=env,
                             timeout=600)
    finally:
        for root, dirs, files in os.walk(pkg):
            os.chmod(root, 0o755)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "variants ok" in run.stdout
    assert sorted(os.listdir(pkg)) == before
