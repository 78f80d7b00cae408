"""Every ```python block of docs/*.md and README.md runs (blocks marked `python fragment` show options
and need a process group, so they are only compiled), and the public classes' docstring
examples pass as doctests."""

import doctest
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]
BLOCK = re.compile(r"^```python( fragment)?\n(.*?)^```", re.S | re.M)


def blocks(path):
    return [(bool(m.group(1)), m.group(2)) for m in BLOCK.finditer(open(path).read())]


def test_the_docs_have_runnable_snippets():
    assert sum(not frag for p in DOCS for frag, _ in blocks(p)) >= 3


@pytest.mark.parametrize("path", DOCS, ids=os.path.basename)
def test_doc_snippets_run(path):
    namespace = {"__name__": "docs"}
    for i, (fragment, code) in enumerate(blocks(path)):
        compiled = compile(code, f"{os.path.basename(path)} block {i}", "exec")
        if not fragment:
            exec(compiled, namespace)


@pytest.mark.parametrize("module", ["torchrec_ext.modules.table_kind", "torchrec_ext.modules.dynamic.collection",
                                    "torchrec_ext.modules.hashed.collection", "torchrec_ext.modules.qr.collection",
                                    "torchrec_ext.modules.qr.config", "torchrec_ext.modules.dynamic.hash_table",
                                    "torchrec_ext.sharding.planner", "torchrec_ext.modules.nn_bags"])
def test_docstring_examples(module):
    import importlib

    failed, attempted = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert failed == 0
    assert attempted > 0 or module.endswith("table_kind")


def test_readme_is_short_and_has_no_history():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert len(text.splitlines()) <= 200
    for diary in ("It was", "was 0.", "Targets (issue", "this session", "last run"):
        assert diary not in text, diary
