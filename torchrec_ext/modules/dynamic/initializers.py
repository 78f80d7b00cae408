"""Initializers of dynamic-table rows.

A new row's values are a function of (table seed, key, global column) only, drawn by the
native kernel `block_rows_init_` from a counter-based hash: the same key gets the same
initial vector on every rank, under every plan, in every run, whatever the insertion order.
`eval_value` is what a key the table does not hold reads as in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

CONSTANT, UNIFORM, NORMAL, TRUNCATED_NORMAL = 0, 1, 2, 3


class Initializer:
    """Base class: `native()` gives the kernel's (kind, a, b)."""

    eval_value: float = 0.0

    def native(self) -> Tuple[int, float, float]:
        raise NotImplementedError

    def _check(self) -> None:
        for v in (*self.native()[1:], self.eval_value):
            if not math.isfinite(v):
                raise ValueError(f"{self}: parameters must be finite")


@dataclass(frozen=True)
class Constant(Initializer):
    value: float = 0.0
    eval_value: float = 0.0

    def __post_init__(self):
        self._check()

    def native(self):
        return CONSTANT, float(self.value), 0.0


@dataclass(frozen=True)
class Uniform(Initializer):
    low: float = -0.05
    high: float = 0.05
    eval_value: float = 0.0

    def __post_init__(self):
        self._check()
        if not self.low <= self.high:
            raise ValueError(f"Uniform: low {self.low} > high {self.high}")

    def native(self):
        return UNIFORM, float(self.low), float(self.high)


@dataclass(frozen=True)
class Normal(Initializer):
    mean: float = 0.0
    std: float = 0.05
    eval_value: float = 0.0

    _kind = NORMAL  # not a field: the kernel's draw

    def __post_init__(self):
        self._check()
        if self.std < 0:
            raise ValueError(f"{type(self).__name__}: negative std {self.std}")

    def native(self):
        return self._kind, float(self.mean), float(self.std)


@dataclass(frozen=True)
class TruncatedNormal(Normal):
    """Normal redrawn outside mean +- 2 std (TensorFlow's truncated_normal)."""

    _kind = TRUNCATED_NORMAL


def torchrec_default(num_embeddings: int) -> Uniform:
    """TorchRec's default for an EmbeddingBagConfig: U(-sqrt(1/n), sqrt(1/n))."""
    bound = math.sqrt(1.0 / max(num_embeddings, 1))
    return Uniform(-bound, bound)


__all__ = ["Initializer", "Constant", "Uniform", "Normal", "TruncatedNormal", "torchrec_default",
           "CONSTANT", "UNIFORM", "NORMAL", "TRUNCATED_NORMAL"]
