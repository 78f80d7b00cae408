"""What every torchrec_ext collection shares: TorchRec's EBC contract around per-table lookups.

Each table's kind (`table_kind.py`, registered for its config type) says what state the
table holds and how it pools; this base creates that state as parameters, validates the
KeyedJaggedTensor, routes each table's features to it, and assembles the KeyedTensor in
exactly the key order `torchrec.EmbeddingBagCollection` uses.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import nn
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import (
    EmbeddingBagCollectionInterface,
    get_embedding_names_by_table,
)
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_ext.modules.state_memory import allocate, check_fits
from torchrec_ext.modules.table_kind import FixedStateKind, TableKind, table_kind

POOLING_CODES = {PoolingType.SUM: 0, PoolingType.MEAN: 1}


def pooling_code(config: EmbeddingBagConfig) -> int:
    if config.pooling not in POOLING_CODES:
        raise ValueError(
            f"table '{config.name}': pooling {config.pooling} is not supported (SUM or MEAN)"
        )
    return POOLING_CODES[config.pooling]


def check_ids(table: str, values: torch.Tensor, low: Optional[int], high: Optional[int]) -> None:
    """Raises a ValueError naming `table` unless values are integer ids in [low, high)."""
    if values.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"table '{table}': ids must be int32 or int64, got {values.dtype}")
    if not reads_values(values) or values.numel() == 0 or (low is None and high is None):
        return
    lo, hi = torch.aminmax(values)
    lo, hi = int(lo), int(hi)
    if low is not None and lo < low:
        raise ValueError(f"table '{table}': negative id {lo} (ids must be >= {low})")
    if high is not None and hi >= high:
        raise ValueError(
            f"table '{table}': id {hi} is out of range (num_embeddings = {high})"
        )


def collection_label(name: str, tables: Sequence[EmbeddingBagConfig]) -> str:
    """How input errors name a collection: its class and its tables."""
    return f"{name} (tables {', '.join(repr(t.name) for t in tables)})"


def check_kjt(label: str, features: KeyedJaggedTensor, tables: Sequence[EmbeddingBagConfig],
              weighted: bool, device: Optional[torch.device] = None) -> None:
    """Checks a KJT against a collection's tables before any id reaches a kernel.

    Raises a TypeError (not a KJT) or a ValueError naming the collection's tables, or the
    feature and its table, for anything the kernels would misread: repeated or missing
    keys, ids or lengths of the wrong dtype or device, lengths that do not describe the
    values, negative lengths, weights that are missing, misshapen or not finite.
    """
    if not isinstance(features, KeyedJaggedTensor):
        raise TypeError(f"{label}: forward takes a KeyedJaggedTensor, got {type(features).__name__}")
    keys = features.keys()
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"{label}: features {repeated} appear more than once in the input")
    table_of = {f: t.name for t in tables for f in t.feature_names}
    missing = [f for f in table_of if f not in keys]
    if missing:
        raise ValueError(f"{label}: features {missing} are missing from the input")
    if features.variable_stride_per_key():
        raise ValueError(f"{label}: variable batch size per feature is not supported")
    values, lengths = features.values(), features.lengths()
    if values.dtype not in (torch.int32, torch.int64) or values.dim() != 1:
        raise ValueError(f"{label}: ids must be a 1-D int32 or int64 tensor, got "
                         f"{values.dtype} of shape {tuple(values.shape)}")
    if lengths.dtype not in (torch.int32, torch.int64) or lengths.dim() != 1:
        raise ValueError(f"{label}: lengths must be a 1-D int32 or int64 tensor, got "
                         f"{lengths.dtype} of shape {tuple(lengths.shape)}")
    w = features.weights_or_none()
    for what, t in (("ids", values), ("lengths", lengths), ("weights", w)):
        if t is not None and device is not None and device.type != "meta" and t.device != device:
            raise ValueError(f"{label}: {what} are on {t.device}, the tables on {device}")
    if weighted and w is None:
        raise ValueError(f"{label}: the collection is weighted but the input has no weights")
    if not (reads_values(values) and reads_values(lengths)):
        return
    if lengths.numel() != len(keys) * features.stride():
        raise ValueError(f"{label}: {lengths.numel()} lengths for {len(keys)} features of "
                         f"batch {features.stride()}")
    per_key = lengths.view(len(keys), -1) if keys else lengths.view(0, 0)
    if per_key.numel():
        low = per_key.amin(dim=1)
        bad = [k for k, m in zip(keys, low.tolist()) if m < 0]
        if bad:
            raise ValueError(f"{label}: feature '{bad[0]}'"
                             f"{_of_table(table_of, bad[0])} has negative lengths")
    total = int(lengths.sum()) if lengths.numel() else 0
    if total != values.numel():
        raise ValueError(f"{label}: lengths sum to {total} but the KeyedJaggedTensor holds "
                         f"{values.numel()} ids")
    if w is None or not weighted:
        return
    if not w.is_floating_point() or w.dim() != 1:
        raise ValueError(f"{label}: per-sample weights must be a 1-D floating point tensor, "
                         f"got {w.dtype} of shape {tuple(w.shape)}")
    if w.numel() != values.numel():
        raise ValueError(f"{label}: {w.numel()} weights for {values.numel()} ids")
    if reads_values(w) and w.numel() and not bool(torch.isfinite(w).all()):
        ends = torch.cumsum(per_key.sum(dim=1), 0).tolist()
        first = int((~torch.isfinite(w)).nonzero()[0])
        key = next(k for k, e in zip(keys, ends) if first < e)
        raise ValueError(f"{label}: feature '{key}'{_of_table(table_of, key)} has a "
                         f"non-finite weight ({float(w[first])})")


def weights_as_read(features: KeyedJaggedTensor, weighted: bool) -> KeyedJaggedTensor:
    """The KJT with the weights a collection reads: none if it is unweighted (whatever
    weights came with the ids are ignored, as TorchRec's EBC ignores them), float32 if
    it is weighted (the kernels' dtype, and one TorchRec's permute supports)."""
    w = features.weights_or_none()
    if w is None or (weighted and w.dtype == torch.float32):
        return features
    return KeyedJaggedTensor(keys=features.keys(), values=features.values(), lengths=features.lengths(),
                             weights=w.float() if weighted else None, stride=features.stride())


def reads_values(t: torch.Tensor) -> bool:
    """Whether the checks can read t's values: not on meta, and not while torch.compile or
    torch.export traces (the native ops' own checks still guard the traced program)."""
    return t.device.type != "meta" and not torch.compiler.is_compiling()


def _of_table(table_of: dict, key: str) -> str:
    return f" (table '{table_of[key]}')" if key in table_of else ""


def bags_to_batch_major(pooled: torch.Tensor, num_features: int, batch: int) -> torch.Tensor:
    """[F*B, D] pooled bags (feature-major, as in a KJT) -> [B, F*D], TorchRec's layout."""
    dim = pooled.shape[1]
    return pooled.view(num_features, batch, dim).transpose(0, 1).reshape(batch, num_features * dim)


class ExtEmbeddingBagCollection(EmbeddingBagCollectionInterface):
    """Drop-in `torchrec.EmbeddingBagCollection` over tables of any registered fixed-state
    kind (`FixedStateKind`): the base of the hashed and QR collections, and the collection
    a user's own kind works with unchanged (tables of several kinds may share it).

    Args:
        tables: configs whose types have a registered kind.
        is_weighted: the input KJT carries per-sample weights (SUM pooling only).
        device: where the state lives ("meta" to plan and shard first).

    Returns (forward): a `KeyedTensor` with one pooled [batch, dim] per feature.

    `embedding_bags[<table>].<state name>` holds each of a table's state tensors whole.
    """

    config_type: type = EmbeddingBagConfig
    kind_type: type = FixedStateKind  # the kinds this collection's tables must have

    def __init__(
        self,
        tables: Sequence[EmbeddingBagConfig],
        is_weighted: bool = False,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        torch._C._log_api_usage_once(f"torchrec_ext.{type(self).__name__}")
        for t in tables:
            if not isinstance(t, self.config_type):
                raise TypeError(f"{type(self).__name__}: table '{t.name}' needs a {self.config_type.__name__}")
            if not isinstance(table_kind(t), self.kind_type):
                raise TypeError(f"{type(self).__name__}: table '{t.name}' is of kind {type(table_kind(t)).__name__}, "
                                f"not a {self.kind_type.__name__}")
        self._kinds: List[TableKind] = [table_kind(t) for t in tables]
        self._embedding_bag_configs: List[EmbeddingBagConfig] = list(tables)
        self._is_weighted = is_weighted
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        names = [t.name for t in tables]
        if len(set(names)) != len(names) or any(not n for n in names):
            raise ValueError(f"{type(self).__name__}: table names must be unique and non-empty: {names}")
        for n in names:  # tables are entries of an nn.ModuleDict, as in TorchRec's EBC
            if hasattr(nn.ModuleDict, n) or "." in n:
                raise ValueError(f"table '{n}': a table name must not contain '.' or be an attribute of "
                                 "nn.ModuleDict (such as 'items', 'keys' or 'values')")
        for t in tables:
            if not t.feature_names:
                t.feature_names = [t.name]
            pooling_code(t)
            if is_weighted and t.pooling == PoolingType.MEAN:
                # As torchrec.EmbeddingBagCollection (nn.EmbeddingBag): weights need SUM.
                raise ValueError(
                    f"table '{t.name}': MEAN pooling with per-sample weights is not supported; "
                    "use SUM pooling for a weighted collection"
                )
        self._embedding_names: List[str] = [
            n for per_table in get_embedding_names_by_table(self._embedding_bag_configs) for n in per_table
        ]
        self._lengths_per_embedding: List[int] = [
            t.embedding_dim for t in tables for _ in t.feature_names
        ]
        self._feature_names: List[str] = [f for t in tables for f in t.feature_names]
        self._feature_splits: List[int] = [len(t.feature_names) for t in tables]
        self._pooling = [pooling_code(t) for t in tables]
        self.embedding_bags = nn.ModuleDict()
        self._build_tables()

    def _build_tables(self) -> None:
        """The unsharded table is one shard holding every piece of its state."""
        self._pieces = []
        self._layouts = []
        for t, kind in zip(self._embedding_bag_configs, self._kinds):
            full = kind.parameter_shape(t)
            pieces = kind.state_pieces(t, ShardingType.TABLE_WISE.value, (0, 0), full)
            dtype = kind.parameter_dtype(t)
            nbytes = sum(math.prod(pc.sizes) for pc in pieces) * dtype.itemsize
            check_fits(t.name, "state", nbytes, self._device)
            holder = nn.Module()
            tensors = allocate(t.name, "state", nbytes, lambda: [
                torch.empty(pc.sizes, dtype=dtype, device=self._device) for pc in pieces])
            for pc, w in zip(pieces, tensors):
                holder.register_parameter(pc.name, nn.Parameter(w))
            self.embedding_bags[t.name] = holder
            self._pieces.append(pieces)
            self._layouts.append(kind.make_shard_state(t, pieces, (0, 0), full))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for i, (t, kind) in enumerate(zip(self._embedding_bag_configs, self._kinds)):
            for w, pc in zip(self._weights_of(i), self._pieces[i]):
                kind.init_piece_(t, w.data, pc)

    def table_weights(self, name: str) -> List[nn.Parameter]:
        """A table's state tensors, in the order its kernels take them."""
        return self._weights_of([t.name for t in self._embedding_bag_configs].index(name))

    def _weights_of(self, index: int) -> List[nn.Parameter]:
        params = self.embedding_bags[self._embedding_bag_configs[index].name]._parameters
        return [params[pc.name] for pc in self._pieces[index]]

    # --- EmbeddingBagCollectionInterface ---
    def embedding_bag_configs(self) -> List[EmbeddingBagConfig]:
        return self._embedding_bag_configs

    def is_weighted(self) -> bool:
        return self._is_weighted

    @property
    def device(self) -> torch.device:
        return self._device

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        check_kjt(collection_label(type(self).__name__, self._embedding_bag_configs), features,
                  self._embedding_bag_configs, self._is_weighted, self._device)
        features = weights_as_read(features, self._is_weighted)
        batch = features.stride()
        per_table = features.permute(
            [features.keys().index(f) for f in self._feature_names]
        ).split(self._feature_splits)
        pooled = []
        for i, (config, kjt) in enumerate(zip(self._embedding_bag_configs, per_table)):
            weights = kjt.weights_or_none() if self._is_weighted else None
            out = self._pool_table(i, kjt.values(), kjt.offsets(), weights)
            pooled.append(bags_to_batch_major(out, len(config.feature_names), batch))
        values = torch.cat(pooled, dim=1) if pooled else torch.empty(batch, 0)
        return KeyedTensor(
            keys=self._embedding_names,
            length_per_key=self._lengths_per_embedding,
            values=values,
        )

    def _pool_table(self, index: int, values: torch.Tensor, offsets: torch.Tensor,
                    weights: Optional[torch.Tensor]) -> torch.Tensor:
        config, kind = self._embedding_bag_configs[index], self._kinds[index]
        check_ids(config.name, values, *kind.id_bounds(config))
        return kind.pool(
            config,
            self._layouts[index],
            self._weights_of(index),
            values.long(),
            offsets.long(),
            weights.float() if weights is not None else None,
            self._pooling[index],
        )
