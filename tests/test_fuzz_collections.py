"""Every collection against random, often malformed KeyedJaggedTensors (Hypothesis).

Each batch (tests/fuzz_inputs.py) either is valid, and then the output equals an
independent reference (hashed_reference / qr_reference, or the dynamic table's own rows
read back from its state dict), or breaks a rule, and then forward raises a ValueError
or TypeError that names the collection's tables, or the table or feature at fault, and
the stored state is exactly what it was. A crash fails the run; the watchdog ends a hang.
"""

import faulthandler
import sys

import pytest
from fuzz_checks import check, id_bound
from fuzz_inputs import batches, problems
from hypothesis import HealthCheck, Phase, find, given, settings
from sample_tables import hashed_tables, qr_tables
from torchrec import PoolingType

from torchrec_ext import (
    DynamicEmbeddingBagCollection,
    DynamicEmbeddingBagConfig,
    HashedEmbeddingBagCollection,
    HashedEmbeddingBagConfig,
    QREmbeddingBagCollection,
    QREmbeddingBagConfig,
)
from torchrec_ext.initializers import Normal

EXAMPLES = 150  # per collection
FEATURES = ["a", "b", "shared"]


def weighted_hashed():
    return [HashedEmbeddingBagConfig(name="w0", num_embeddings=400, embedding_dim=8, feature_names=["a", "shared"],
                                     signed=True),
            HashedEmbeddingBagConfig(name="w1", num_embeddings=300, embedding_dim=4, feature_names=["b"],
                                     mode="element", compression=0.3)]


def weighted_qr():
    return [QREmbeddingBagConfig(name="w0", num_embeddings=400, embedding_dim=4, feature_names=["a", "b", "shared"],
                                 operation="add", num_collisions=7)]


def dynamic_tables():
    return [DynamicEmbeddingBagConfig(name="d0", num_embeddings=100, embedding_dim=4, feature_names=["a", "shared"],
                                      block_size=8, initializer=Normal(0.0, 0.5, eval_value=-0.5)),
            DynamicEmbeddingBagConfig(name="d1", num_embeddings=100, embedding_dim=8, feature_names=["b"],
                                      block_size=8, pooling=PoolingType.MEAN)]


CASES = {
    "hashed": (HashedEmbeddingBagCollection, hashed_tables, False, True),
    "hashed_weighted": (HashedEmbeddingBagCollection, weighted_hashed, True, True),
    "qr": (QREmbeddingBagCollection, qr_tables, False, True),
    "qr_weighted": (QREmbeddingBagCollection, weighted_qr, True, True),
    "dynamic": (DynamicEmbeddingBagCollection, dynamic_tables, False, True),
    "dynamic_weighted": (DynamicEmbeddingBagCollection,
                         lambda: [DynamicEmbeddingBagConfig(name="d", num_embeddings=10, embedding_dim=4,
                                                            feature_names=FEATURES, block_size=8)], True, True),
    "dynamic_eval": (DynamicEmbeddingBagCollection, dynamic_tables, False, False),
}


@pytest.fixture(autouse=True)
def no_hang():
    faulthandler.dump_traceback_later(300, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.mark.parametrize("case", list(CASES))
def test_random_batches_match_the_reference_or_raise_cleanly(case):
    klass, make, weighted, training = CASES[case]
    cfgs = make()
    coll = klass(cfgs, is_weighted=weighted)
    coll.train(training)
    bound = id_bound(cfgs)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(batches(FEATURES, bound))
    def run(batch):
        check(coll, cfgs, batch, weighted)

    run()


@pytest.mark.parametrize("rule", ["repeated key", "missing key", "id dtype", "device", "no weights",
                                  "lengths count", "negative length", "ids do not match lengths",
                                  "weights count", "non-finite weight", "weights dtype", "id out of range"])
def test_the_generator_draws_every_rule(rule):
    """Each rule the oracle knows is one the batches above can break (Hypothesis finds a
    batch breaking it)."""
    batch = find(batches(FEATURES, 300), lambda b: rule in problems(b, FEATURES, 300, True)
                 or rule in problems(b, FEATURES, 300, False),
                 settings=settings(max_examples=5000, database=None, derandomize=True, phases=[Phase.generate],
                                   suppress_health_check=list(HealthCheck)))
    assert rule in problems(batch, FEATURES, 300, True) + problems(batch, FEATURES, 300, False)
