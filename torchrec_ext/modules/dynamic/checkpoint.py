"""How a dynamic table travels in a state dict: one `KeyedRows` entry per key bucket,
`<prefix>bucket_<b>`, so a checkpoint moves between plans and world sizes bucket by bucket."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

from torchrec_ext.modules.dynamic.config import DynamicEmbeddingBagConfig
from torchrec_ext.modules.dynamic.rows import DynamicRows, KeyedRows, bucket_of


def bucket_entries(entry: KeyedRows, buckets: Sequence[int], num_buckets: int) -> Dict[int, KeyedRows]:
    """The entry split by key bucket (every listed bucket, empty ones included), on CPU."""
    b = bucket_of(entry.keys, num_buckets)
    pending = entry.pending_keys
    pb = bucket_of(pending, num_buckets) if pending is not None else None
    out = {}
    for k in buckets:
        e = entry.select(b == k)
        if pending is not None:
            e.pending_keys, e.pending_counts = pending[pb == k], entry.pending_counts[pb == k]
        out[k] = e.cpu()
    return out


def bucket_key(prefix: str, b: int) -> str:
    return f"{prefix}bucket_{b}"


def load_buckets(rows: DynamicRows, cfg: DynamicEmbeddingBagConfig, state_dict: Mapping[str, Any],
                 prefix: str, buckets) -> Dict[int, KeyedRows]:
    """Replaces `rows` with the given buckets' entries found in state_dict (the columns
    `rows` holds of each); returns the entries used."""
    entries = {}
    for b in buckets:
        v = state_dict.get(bucket_key(prefix, b))
        if v is None:
            continue
        if not isinstance(v, KeyedRows):
            raise TypeError(f"table '{cfg.name}': {bucket_key(prefix, b)} is a {type(v).__name__}, "
                            "not KeyedRows")
        if v.values.dim() != 2 or v.values.shape[1] != cfg.embedding_dim:
            raise ValueError(f"table '{cfg.name}': {bucket_key(prefix, b)} holds rows of shape "
                             f"{tuple(v.values.shape)}, the table has dim {cfg.embedding_dim}")
        entries[b] = v
    if entries:
        rows.clear()
        for v in entries.values():
            rows.load(v, rows.column_slice(cfg.embedding_dim))
    return entries
