"""The table-kind contract: what a kind of table tells the collections, the planner and
the sharders, registered per config type.

TorchRec plans and shards one 2-D tensor per table. A torchrec_ext table offers the
planner a *view* of itself (`parameter_shape`: rows the row-wise plan cuts, output columns
the column-wise plan cuts) and says, for each shard of that view, what the shard holds.
The sharding layer never inspects a config: it asks the config's registered `TableKind`.

Two families exist:
  * `FixedStateKind`: the state is fixed-shape tensors (*state pieces*: a hashed table's
    buffer, a QR table's partition tables); the kind gives the pieces a shard holds, their
    plan-independent init, and batched kernels. A user's own kind subclasses this one and
    works with `ExtEmbeddingBagCollection` and the sharders unchanged.
  * `torchrec_ext.modules.dynamic.DynamicTableKind`: rows created as ids arrive.

    register_table_kind(MyConfig, MyKind())   # MyConfig subclasses EmbeddingBagConfig
    table_kind(config)                        # the kind of a config (walks its type's MRO)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from torchrec_ext.modules import row_optim
from torchrec_ext.ops.batched import one_table


@dataclass(frozen=True)
class StatePiece:
    """A block of one state tensor that a shard holds.

    Args:
        name: the state tensor's name ("weight", "weight_0", ...).
        offsets: (row, column) of the block in the state tensor.
        sizes: (rows, columns) of the block.
        replicated: every rank of the plan holds this same block (e.g. the small partition
            tables of a row-wise QR table); its gradients are summed across ranks.
    """

    name: str
    offsets: Tuple[int, int]
    sizes: Tuple[int, int]
    replicated: bool = False

    @property
    def numel(self) -> int:
        return self.sizes[0] * self.sizes[1]


class TableKind(abc.ABC):
    """What every kind of table answers. Methods take the table's config first.

    Attributes:
        fixed_size: the state's size follows from the config (False: it grows with the ids
            seen, so no plan fixes it).
        optimizers: the fused optimizers (``row_optim`` kinds: "sgd", "adagrad", ...) the
            kind's kernels implement.
    """

    fixed_size: bool = True
    optimizers: FrozenSet[str] = frozenset({row_optim.SGD, row_optim.ADAGRAD, row_optim.ROWWISE_ADAGRAD})

    def kernel_group(self, config: EmbeddingBagConfig) -> Optional[str]:
        """Tables whose kinds return the same group share one TorchRec lookup kernel, which
        serves them in batched calls. None: the table gets a kernel of its own."""
        return None

    @abc.abstractmethod
    def parameter_shape(self, config: EmbeddingBagConfig) -> Tuple[int, int]:
        """The planner's view of the table: (rows a row-wise plan cuts, output columns)."""

    def parameter_dtype(self, config: EmbeddingBagConfig) -> torch.dtype:
        """The dtype the planner charges per element of the view."""
        return torch.float32

    @abc.abstractmethod
    def id_bounds(self, config: EmbeddingBagConfig) -> Tuple[Optional[int], Optional[int]]:
        """Valid ids: (low, high) with high exclusive; None where unbounded."""

    @abc.abstractmethod
    def rw_id_space(self, config: EmbeddingBagConfig, block_rows: int, world_size: int) -> int:
        """The id space TorchRec bucketizes row-wise, so that rank r's block of ids is the
        ids that view rows [r * block_rows, (r + 1) * block_rows) serve."""

    def row_shard_unit(self, config: EmbeddingBagConfig) -> int:
        """Row-wise shards must start on (and, but the last, span) multiples of this."""
        return 1

    def col_shard_unit(self, config: EmbeddingBagConfig) -> int:
        """Column-wise shards must start on and span multiples of this."""
        return 1

    def unsupported_sharding(self, config: EmbeddingBagConfig, sharding_type: str) -> Optional[str]:
        """Why `sharding_type` cannot hold the table, or None if it can."""
        return None

    def shard_unit_rule(self, config: EmbeddingBagConfig) -> str:
        """The rule behind row_shard_unit, in words, for the planner's error messages."""
        return "see the table's config"

    @abc.abstractmethod
    def storage_bytes(self, config: EmbeddingBagConfig, sharding_type: str, offsets: Sequence[int],
                      sizes: Sequence[int], optimizer: Optional[str]) -> int:
        """Bytes the planner charges one shard of the view (`offsets`, `sizes`): its state
        plus the fused optimizer's state (`optimizer` None: a dense optimizer's, charged
        by TorchRec)."""


class FixedStateKind(TableKind):
    """A table whose state is fixed-shape tensors, cut into pieces by a plan.

    The batched kernels serve many shards (of this kind) in one call. Their arguments:
    `states` (one `make_shard_state` result per shard), `weights` (every shard's pieces,
    shard after shard), `values` / `offsets` (the KJT's ids and bag offsets, shard-local
    ids), `psw` (per-sample weights or None), `table_bags` (shard t pools bags
    table_bags[t] .. table_bags[t + 1]), `poolings` (0 SUM, 1 MEAN, per shard).
    """

    @abc.abstractmethod
    def state_names(self, config: EmbeddingBagConfig) -> List[str]:
        """Names of the table's state tensors (the state dict's suffixes)."""

    @abc.abstractmethod
    def state_shape(self, config: EmbeddingBagConfig, name: str) -> Tuple[int, int]:
        """Global shape of one state tensor."""

    @abc.abstractmethod
    def state_pieces(self, config: EmbeddingBagConfig, sharding_type: str, offsets: Sequence[int],
                     sizes: Sequence[int]) -> List[StatePiece]:
        """The pieces a shard of the view (`offsets`, `sizes`) holds under `sharding_type`."""

    @abc.abstractmethod
    def init_piece_(self, config: EmbeddingBagConfig, tensor: torch.Tensor, piece: StatePiece) -> torch.Tensor:
        """Fills `tensor` (the piece) in place with values that depend on the piece's global
        coordinates only, so every plan starts from the same table. Returns it."""

    @abc.abstractmethod
    def make_shard_state(self, config: EmbeddingBagConfig, pieces: Sequence[StatePiece], offsets: Sequence[int],
                         sizes: Sequence[int]) -> Any:
        """What the kernels need to know of a shard (e.g. its layout); passed back as `states`."""

    @abc.abstractmethod
    def pool_batch(self, states: Sequence[Any], weights: Sequence[torch.Tensor], values: torch.Tensor,
                   offsets: torch.Tensor, psw: Optional[torch.Tensor], table_bags: Sequence[int],
                   poolings: Sequence[int]) -> List[torch.Tensor]:
        """Pooled bags of every shard, [bags, output columns] each; differentiable in the
        weights (dense gradients: the unsharded collections train through it)."""

    @abc.abstractmethod
    def backward_batch(self, states: Sequence[Any], grads: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                       values: torch.Tensor, offsets: torch.Tensor, psw: Optional[torch.Tensor],
                       table_bags: Sequence[int], poolings: Sequence[int], need_psw: bool,
                       kept: Any = None) -> Tuple[List[List[Tuple[Optional[torch.Tensor], torch.Tensor]]], Any]:
        """The fused path's gradients: per shard, per piece, (rows or None, gradient): the
        distinct rows touched and their gradient rows, or None and a dense gradient. Then
        the per-sample-weight gradient (or empty). `kept`: what `pool_batch_keep` kept."""

    def pool_batch_keep(self, states, weights, values, offsets, psw, table_bags, poolings):
        """`pool_batch` of the fused training path, plus what its backward may reuse (here:
        nothing). Returns (outputs, kept)."""
        return self.pool_batch(states, weights, values, offsets, psw, table_bags, poolings), None

    #: sgd_batch_ exists: SGD runs inside the backward pass, with no gradient of the state.
    fused_sgd: bool = False

    def sgd_batch_(self, states, weights, grads, values, offsets, psw, table_bags, poolings, lr: float,
                   need_psw: bool, kept: Any = None) -> torch.Tensor:
        """The backward pass fused with SGD, in place: weight -= lr * gradient. Returns the
        per-sample-weight gradient (from the weights before the update) or empty."""
        raise NotImplementedError(f"{type(self).__name__} has no fused SGD kernel (fused_sgd is False)")

    def pool(self, config: EmbeddingBagConfig, state: Any, weights: Sequence[torch.Tensor], values: torch.Tensor,
             offsets: torch.Tensor, psw: Optional[torch.Tensor], pooling: int) -> torch.Tensor:
        """One shard's pooled bags (the unsharded collection's forward)."""
        return self.pool_batch([state], weights, values, offsets, psw, one_table(offsets), [pooling])[0]

    def storage_bytes(self, config, sharding_type, offsets, sizes, optimizer):
        elem = torch.empty(0, dtype=self.parameter_dtype(config)).element_size()
        pieces = self.state_pieces(config, sharding_type, offsets, sizes)
        total = sum(p.numel for p in pieces) * elem
        if optimizer is not None:
            total += sum(row_optim.dense_state_bytes(optimizer, *p.sizes, elem) for p in pieces)
        return total


_KINDS: Dict[type, TableKind] = {}


def register_table_kind(config_type: type, kind: TableKind) -> None:
    """Makes `kind` the kind of every config of `config_type` (and of its subclasses that
    register none of their own).

    Args:
        config_type: a subclass of TorchRec's `EmbeddingBagConfig`.
        kind: an instance of a `TableKind` subclass.

    Example:
        >>> register_table_kind(MyConfig, MyKind())  # doctest: +SKIP
    """
    if not (isinstance(config_type, type) and issubclass(config_type, EmbeddingBagConfig)):
        raise TypeError(f"register_table_kind: {config_type!r} is not a subclass of EmbeddingBagConfig")
    if not isinstance(kind, TableKind):
        raise TypeError(f"register_table_kind: {kind!r} is not a TableKind")
    _KINDS[config_type] = kind


def find_table_kind(config: Any) -> Optional[TableKind]:
    """The kind registered for `config`'s type (or its nearest base), None if there is none."""
    for cls in type(config).__mro__:
        kind = _KINDS.get(cls)
        if kind is not None:
            return kind
    return None


def table_kind(config: Any) -> TableKind:
    """The kind registered for `config`'s type; raises a TypeError naming the table if none is."""
    kind = find_table_kind(config)
    if kind is None:
        name = config.name if isinstance(config, EmbeddingBagConfig) else repr(config)
        raise TypeError(f"table '{name}': no table kind is registered for {type(config).__name__} "
                        "(see torchrec_ext.modules.table_kind.register_table_kind)")
    return kind
