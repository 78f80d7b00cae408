"""Type checks of a table config's fields, run in each config's `__post_init__`.

A config is a plain dataclass, so nothing stops `embedding_dim="16"` or a float
`num_embeddings` from reaching the kernels, where it would fail far from its cause (or
overflow int64 silently). Each config names its fields' types here; a field of the wrong
type raises a TypeError, an integer outside int64 a ValueError, both naming the table.
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, Tuple, Union

INT64 = (-(2**63), 2**63 - 1)

# What a field may hold: a type, ("list", element type), or ("optional", either of those).
FieldSpec = Union[type, Tuple[str, Any]]

BASE_FIELDS: Dict[str, FieldSpec] = {
    "name": str,
    "num_embeddings": int,
    "embedding_dim": int,
    "feature_names": ("list", str),
}


def _matches(value: Any, kind: type) -> bool:
    if kind is int:  # any integer type (numpy ints too), but not bool
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check(label: str, field: str, value: Any, spec: FieldSpec) -> None:
    if isinstance(spec, tuple) and spec[0] == "optional":
        if value is not None:
            _check(label, field, value, spec[1])
        return
    if isinstance(spec, tuple) and spec[0] == "list":
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{label}: {field} must be a list, got {type(value).__name__}")
        for i, v in enumerate(value):
            _check(label, f"{field}[{i}]", v, spec[1])
        return
    if not _matches(value, spec):
        raise TypeError(f"{label}: {field} must be {spec.__name__}, got {type(value).__name__} "
                        f"({value!r})")
    if spec is int and not INT64[0] <= int(value) <= INT64[1]:
        raise ValueError(f"{label}: {field} = {value} does not fit in int64")


def check_fields(config: Any, label: str, fields: Dict[str, FieldSpec]) -> None:
    """Raises TypeError / ValueError naming `label` for the first field of the wrong type."""
    for field, spec in {**BASE_FIELDS, **fields}.items():
        _check(label, field, getattr(config, field), spec)
