"""Table configs with random, often absurd fields (Hypothesis): zero, negative and
int64-overflowing sizes, NaN compression, strings and floats where ints belong, lists of
the wrong things. Each config either raises a TypeError / ValueError naming its table
(at construction, or when a collection builds it: a state larger than the machine's
memory is a ValueError, never an allocation that kills the process), or builds a
collection whose forward on a valid batch matches the reference.
"""

import pytest
import torch
from fuzz_checks import check
from fuzz_inputs import batches
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from torchrec_ext import (
    DynamicEmbeddingBagCollection,
    DynamicEmbeddingBagConfig,
    HashedEmbeddingBagCollection,
    HashedEmbeddingBagConfig,
    QREmbeddingBagCollection,
    QREmbeddingBagConfig,
)
from torchrec_ext.modules.state_memory import device_bytes

EXAMPLES = 200  # per kind
FEATURES = ["a", "b", "shared"]
# A state this large is built for real (and checked); larger ones up to the machine's
# memory are valid but too slow to build in a test, so such examples are skipped.
BUILD_LIMIT = 64 * 2**20
BAD_INTS = [-(2**63) - 1, -(2**63), -1, 0, 1, 2**31, 2**40, 2**62, 2**63 - 1, 2**63, 2**64]
BAD_VALUES = BAD_INTS + [float("nan"), float("inf"), -0.5, 0.5, 3.0, "8", None, True, [1, 2], b"x"]

GOOD = {
    HashedEmbeddingBagConfig: dict(
        compression=st.floats(0.01, 1.0), buffer_size=st.one_of(st.none(), st.integers(1, 5000)),
        mode=st.sampled_from(["element", "block"]), chunk_size=st.sampled_from([0, 1, 2, 4]),
        block_align=st.sampled_from([0, 1, 2]), seed=st.integers(0, 2**40), signed=st.booleans(),
        row_regions=st.integers(1, 8)),
    QREmbeddingBagConfig: dict(
        partition=st.sampled_from(["qr", "generalized_qr", "crt"]), num_collisions=st.integers(0, 40),
        factors=st.sampled_from([[5, 7, 11], [20, 20], [400]]), operation=st.sampled_from(["mult", "add", "concat"]),
        seed=st.one_of(st.none(), st.integers(0, 2**40))),
    DynamicEmbeddingBagConfig: dict(
        initial_capacity=st.integers(0, 64), max_capacity=st.one_of(st.none(), st.integers(64, 200)),
        block_size=st.integers(1, 32), key_buckets=st.integers(1, 64), seed=st.one_of(st.none(), st.integers(0, 2**40)),
        eviction_interval=st.integers(0, 5), grad_reduce_by=st.sampled_from(["sum", "id"]),
        on_full=st.sampled_from(["raise", "reject"]), delta_window=st.integers(1, 100)),
}
COLLECTIONS = {HashedEmbeddingBagConfig: HashedEmbeddingBagCollection, QREmbeddingBagConfig: QREmbeddingBagCollection,
               DynamicEmbeddingBagConfig: DynamicEmbeddingBagCollection}
NUM_EMBEDDINGS = 400  # the QR factors above cover it


def state_bytes(cfg) -> int:
    if isinstance(cfg, HashedEmbeddingBagConfig):
        return cfg.buffer_rows * cfg.embedding_dim * 4
    if isinstance(cfg, QREmbeddingBagConfig):
        return cfg.table_bytes()
    blocks = -(-cfg.initial_capacity // cfg.block_size)
    return blocks * cfg.block_size * cfg.embedding_dim * 4 + 32 * cfg.initial_capacity


@st.composite
def configs(draw, kind):
    fields = {k: draw(s) for k, s in GOOD[kind].items()}
    fields.update(name="t", num_embeddings=NUM_EMBEDDINGS, embedding_dim=draw(st.sampled_from([2, 4, 6, 8])),
                  feature_names=list(FEATURES))
    if kind is QREmbeddingBagConfig and fields["operation"] == "concat":
        fields["partition_dims"] = None
    names = ["num_embeddings", "embedding_dim", "name", "feature_names"] + list(GOOD[kind])
    for field in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
        fields[field] = draw(st.sampled_from(BAD_VALUES))
    return kind, fields


def construct(kind, fields):
    """The config, or None after checking that construction refused it cleanly."""
    try:
        return kind(**fields)
    except (TypeError, ValueError) as e:
        assert "'t'" in str(e) or "<unnamed>" in str(e) or "name" in str(e), f"error names no table: {e}"
        return None


@pytest.mark.parametrize("kind", list(GOOD), ids=lambda k: k.__name__)
def test_random_configs_build_or_raise_cleanly(kind):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(configs(kind), st.data())
    def run(case, data):
        kind, fields = case
        cfg = construct(kind, fields)
        if cfg is None:
            return
        size = state_bytes(cfg)
        limit = device_bytes(torch.device("cpu"))
        assume(size <= BUILD_LIMIT or size > limit)
        try:
            coll = COLLECTIONS[kind]([cfg])
        except (TypeError, ValueError) as e:
            assert "'t'" in str(e), f"error names no table: {e}"
            return
        assert size <= BUILD_LIMIT, f"a state of {size} bytes (more than the machine has) was built"
        n = cfg.num_embeddings if not isinstance(cfg, DynamicEmbeddingBagConfig) else None
        batch = data.draw(batches(cfg.feature_names, n, bad=False))
        check(coll, [cfg], batch, False)

    run()


def test_a_state_larger_than_memory_is_a_value_error():
    huge = HashedEmbeddingBagConfig(name="huge", num_embeddings=2**50, embedding_dim=64, compression=0.5)
    with pytest.raises(ValueError, match="table 'huge': its state would take .* GiB, more than"):
        HashedEmbeddingBagCollection([huge])
    dyn = DynamicEmbeddingBagConfig(name="dyn", num_embeddings=10, embedding_dim=8, initial_capacity=2**45)
    with pytest.raises(ValueError, match="table 'dyn': its .* would take"):
        DynamicEmbeddingBagCollection([dyn])


def test_field_types_are_checked_with_the_table_name():
    with pytest.raises(TypeError, match="hashed table 'x': embedding_dim must be int, got str"):
        HashedEmbeddingBagConfig(name="x", num_embeddings=10, embedding_dim="8")
    with pytest.raises(ValueError, match="QR table 'x': num_embeddings = 18446744073709551616 does not fit in int64"):
        QREmbeddingBagConfig(name="x", num_embeddings=2**64, embedding_dim=8)
    with pytest.raises(TypeError, match=r"QR table 'x': factors\[1\] must be int, got float"):
        QREmbeddingBagConfig(name="x", num_embeddings=10, embedding_dim=8, partition="crt", factors=[3, 5.0])
    with pytest.raises(TypeError, match="dynamic table 'x': block_size must be int, got NoneType"):
        DynamicEmbeddingBagConfig(name="x", num_embeddings=10, embedding_dim=8, block_size=None)
