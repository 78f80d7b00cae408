"""What every torchrec_ext collection shares: TorchRec's EBC contract around per-table lookups.

Each table's kind (`table_kind.py`, registered for its config type) says what state the
table holds and how it pools; this base creates that state as parameters, validates the
KeyedJaggedTensor, routes each table's features to it, and assembles the KeyedTensor in
exactly the key order `torchrec.EmbeddingBagCollection` uses.
"""

from __future__ import annotations

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
    if values.numel() == 0 or values.device.type == "meta" or (low is None and high is None):
        return
    lo, hi = torch.aminmax(values)
    lo, hi = int(lo), int(hi)
    if low is not None and lo < low:
        raise ValueError(f"table '{table}': negative id {lo} (ids must be >= {low})")
    if high is not None and hi >= high:
        raise ValueError(
            f"table '{table}': id {hi} is out of range (num_embeddings = {high})"
        )


def check_kjt(name: str, features: KeyedJaggedTensor) -> None:
    """Structure checks: lengths must describe the values, weights must match them."""
    if features.variable_stride_per_key():
        raise ValueError(f"{name}: variable batch size per feature is not supported")
    values, lengths = features.values(), features.lengths()
    if values.device.type == "meta":
        return
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"{name}: negative lengths in the KeyedJaggedTensor")
    total = int(lengths.sum()) if lengths.numel() else 0
    if total != values.numel():
        raise ValueError(
            f"{name}: lengths sum to {total} but the KeyedJaggedTensor holds "
            f"{values.numel()} ids"
        )
    w = features.weights_or_none()
    if w is not None:
        if not w.is_floating_point():
            raise ValueError(f"{name}: per-sample weights must be floating point, got {w.dtype}")
        if w.numel() != values.numel():
            raise ValueError(f"{name}: {w.numel()} weights for {values.numel()} ids")


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
            holder = nn.Module()
            for pc in pieces:
                dtype = kind.parameter_dtype(t)
                holder.register_parameter(pc.name, nn.Parameter(torch.empty(pc.sizes, dtype=dtype, device=self._device)))
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
        check_kjt(type(self).__name__, features)
        missing = [f for f in self._feature_names if f not in features.keys()]
        if missing:
            raise ValueError(f"{type(self).__name__}: features {missing} are missing from the input")
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
