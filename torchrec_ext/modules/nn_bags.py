"""`nn.EmbeddingBag`- and `nn.Embedding`-style modules over one table of each kind (the
seeds' module APIs).

`HashedEmbeddingBag`, `QREmbeddingBag` and `DynamicEmbeddingBag` take what
`torch.nn.EmbeddingBag.forward` takes: a 1-D input with offsets (bag starts, or with
`include_last_offset` also the end), or a 2-D [bags, length] input without, and optional
per-sample weights (SUM only, as nn.EmbeddingBag), and pool by sum, mean or max. Empty
bags give zeros. Max looks each id up through the kernels as a bag of one and takes the
bags' maxima in torch (`max_bags`); the kernels have no max pooling of their own. Each holds a
one-table collection of its kind and pools through the same kernels and checks (bad
input raises a ValueError naming the table), so a module and a collection with the same
config compute the same function; `.collection` is that collection.

`HashedEmbedding`, `QREmbedding` and `DynamicEmbedding` are the `nn.Embedding` forms: one
vector per id, any input shape, through the same kernels (a lookup is a bag of one id).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

from torchrec_ext.modules.collection_base import ExtEmbeddingBagCollection, reads_values
from torchrec_ext.modules.dynamic import DynamicEmbeddingBagCollection, DynamicEmbeddingBagConfig
from torchrec_ext.modules.hashed import HashedEmbeddingBagCollection, HashedEmbeddingBagConfig
from torchrec_ext.modules.qr import QREmbeddingBagCollection, QREmbeddingBagConfig

# "max": the table looks each id up as a bag of one (SUM), and the bags' maxima are taken here.
POOLINGS = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN, "max": PoolingType.SUM}


def pooling_of(name: str, mode: str) -> PoolingType:
    if mode not in POOLINGS:
        raise ValueError(f"table '{name}': mode {mode!r} is not supported (sum, mean or max)")
    return POOLINGS[mode]


def max_bags(rows: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Per bag and column, the largest of the bag's rows ([ids, dim] -> [bags, dim]); the
    gradient goes to that one element, the first of equal ones (as nn.EmbeddingBag's max
    on CPU). Empty bags give zeros."""
    n, dim = rows.shape
    bags = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    bag_of = torch.repeat_interleave(torch.arange(bags, device=rows.device), lengths)[:, None].expand(n, dim)
    values = rows.detach()
    best = values.new_full((bags, dim), -float("inf")).scatter_reduce(0, bag_of, values, "amax")
    position = torch.arange(n, device=rows.device)[:, None].expand(n, dim)
    first = torch.full((bags, dim), n, device=rows.device).scatter_reduce(
        0, bag_of, torch.where(values == best.gather(0, bag_of), position, n), "amin")
    if n == 0:
        return rows.new_zeros(bags, dim)
    out = rows.gather(0, first.clamp(max=n - 1))
    return out.masked_fill((lengths == 0)[:, None], 0.0)


class _OneTableBag(nn.Module):
    """The nn.EmbeddingBag calling convention around a one-table collection."""

    def __init__(self, collection: ExtEmbeddingBagCollection, mode: str, include_last_offset: bool) -> None:
        super().__init__()
        self.collection = collection
        self.mode = mode
        self.include_last_offset = include_last_offset

    @property
    def config(self) -> EmbeddingBagConfig:
        return self.collection.embedding_bag_configs()[0]

    def forward(self, input: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        ids, offsets, psw = self._bags(input, offsets, per_sample_weights)
        if self.mode == "max":
            each = torch.arange(ids.numel() + 1, device=ids.device)
            return max_bags(self.collection._pool_table(0, ids, each, None), offsets)
        return self.collection._pool_table(0, ids, offsets, psw)

    def _bags(self, input, offsets, psw):
        """(ids, offsets with the end, weights) from nn.EmbeddingBag's arguments."""
        name = self.config.name
        if not isinstance(input, torch.Tensor) or input.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"table '{name}': input must be an int32 or int64 tensor")
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError(f"table '{name}': offsets must be None for a 2-D input (bags of fixed length)")
            bags, length = input.shape
            ids = input.reshape(-1)
            offsets = torch.arange(bags + 1, device=input.device) * length
            if psw is not None:
                if psw.shape != input.shape:
                    raise ValueError(f"table '{name}': per_sample_weights must have the input's shape "
                                     f"{tuple(input.shape)}, got {tuple(psw.shape)}")
                psw = psw.reshape(-1)
        elif input.dim() == 1:
            if offsets is None or offsets.dim() != 1 or offsets.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"table '{name}': a 1-D input needs 1-D int32 or int64 offsets")
            ids, offsets = input, offsets.long()
            if not self.include_last_offset:
                offsets = torch.cat([offsets, offsets.new_tensor([ids.numel()])])
            if offsets.numel() == 0 or (reads_values(offsets) and (
                    int(offsets[0]) != 0 or int(offsets[-1]) != ids.numel()
                    or bool((offsets[1:] < offsets[:-1]).any()))):
                raise ValueError(f"table '{name}': offsets must start at 0, not decrease, and "
                                 f"{'end at' if self.include_last_offset else 'stay within'} the "
                                 f"{ids.numel()} ids")
            if psw is not None and psw.shape != ids.shape:
                raise ValueError(f"table '{name}': per_sample_weights must have the input's shape "
                                 f"{tuple(ids.shape)}, got {tuple(psw.shape)}")
        else:
            raise ValueError(f"table '{name}': input must be 1-D (with offsets) or 2-D, got {input.dim()}-D")
        if psw is not None:
            if self.mode != "sum":
                raise ValueError(f"table '{name}': per_sample_weights need mode 'sum' (as nn.EmbeddingBag)")
            if not psw.is_floating_point():
                raise ValueError(f"table '{name}': per_sample_weights must be floating point, got {psw.dtype}")
            if reads_values(psw) and psw.numel() and not bool(torch.isfinite(psw).all()):
                raise ValueError(f"table '{name}': per_sample_weights hold NaN or inf")
        return ids, offsets, psw


class HashedEmbeddingBag(_OneTableBag):
    """A hashed table as an `nn.EmbeddingBag` (HashedNets / ROBE-Z weight sharing).

    Args:
        num_embeddings, embedding_dim: the virtual table's shape.
        compression: buffer size / (num_embeddings x embedding_dim).
        mode: "sum", "mean" or "max" pooling.
        include_last_offset: offsets end with the number of ids (as nn.EmbeddingBag).
        hash_mode: "block" (ROBE-Z, default) or "element" (HashedNets).
        name: the table's name in errors and in `.collection`.
        **config: any other `HashedEmbeddingBagConfig` field (buffer_size, seed, signed, ...).

    Example:
        >>> bag = HashedEmbeddingBag(1_000_000, 16, compression=0.01, mode="mean")
        >>> bag(torch.tensor([[1, 2], [3, 999_999]])).shape
        torch.Size([2, 16])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, compression: float = 0.125, mode: str = "sum",
                 include_last_offset: bool = False, hash_mode: str = "block", name: str = "hashed",
                 device: Optional[torch.device] = None, **config) -> None:
        cfg = HashedEmbeddingBagConfig(name=name, num_embeddings=num_embeddings, embedding_dim=embedding_dim,
                                       feature_names=[name], compression=compression, mode=hash_mode,
                                       pooling=pooling_of(name, mode), **config)
        super().__init__(HashedEmbeddingBagCollection([cfg], is_weighted=mode == "sum", device=device),
                         mode, include_last_offset)

    @property
    def weight(self) -> nn.Parameter:
        """The compressed buffer."""
        return self.collection.table_weights(self.config.name)[0]


class QREmbeddingBag(_OneTableBag):
    """A QR table as an `nn.EmbeddingBag`, with DLRM's `QREmbeddingBag` arguments.

    Args:
        num_categories, embedding_dim: the virtual table's shape.
        num_collisions: m of the quotient-remainder partition (ids per quotient row).
        operation: "mult" (default), "add" or "concat".
        mode: "mean" (DLRM's default), "sum" or "max".
        include_last_offset: offsets end with the number of ids.
        name: the table's name in errors and in `.collection`.
        **config: any other `QREmbeddingBagConfig` field (partition, factors, seed, ...).

    Example:
        >>> bag = QREmbeddingBag(10_000, 8, num_collisions=100)
        >>> bag(torch.tensor([5, 9_999, 7]), torch.tensor([0, 2])).shape
        torch.Size([2, 8])
    """

    def __init__(self, num_categories: int, embedding_dim: int, num_collisions: int = 0, operation: str = "mult",
                 mode: str = "mean", include_last_offset: bool = False, name: str = "qr",
                 device: Optional[torch.device] = None, **config) -> None:
        cfg = QREmbeddingBagConfig(name=name, num_embeddings=num_categories, embedding_dim=embedding_dim,
                                   feature_names=[name], num_collisions=num_collisions, operation=operation,
                                   pooling=pooling_of(name, mode), **config)
        super().__init__(QREmbeddingBagCollection([cfg], is_weighted=mode == "sum", device=device),
                         mode, include_last_offset)

    @property
    def weights(self):
        """The partitions' small tables, in partition order."""
        return self.collection.table_weights(self.config.name)


class DynamicEmbeddingBag(_OneTableBag):
    """A dynamic table as an `nn.EmbeddingBag`: any int64 id, a row made on its first
    sight in training (eval reads the initializer's eval value for unseen ids).

    Args:
        embedding_dim: the rows' width.
        mode: "sum", "mean" or "max".
        include_last_offset: offsets end with the number of ids.
        num_embeddings: the expected number of rows (a hint, as in the config).
        name: the table's name in errors and in `.collection`.
        fused_params: as `DynamicEmbeddingBagCollection`'s (e.g. a fused optimizer).
        **config: any other `DynamicEmbeddingBagConfig` field (max_capacity, eviction, ...).

    Example:
        >>> bag = DynamicEmbeddingBag(8)
        >>> bag(torch.tensor([[10**15, -3]])).shape
        torch.Size([1, 8])
    """

    def __init__(self, embedding_dim: int, mode: str = "sum", include_last_offset: bool = False,
                 num_embeddings: int = 1 << 20, name: str = "dynamic", device: Optional[torch.device] = None,
                 fused_params: Optional[dict] = None, **config) -> None:
        cfg = DynamicEmbeddingBagConfig(name=name, num_embeddings=num_embeddings, embedding_dim=embedding_dim,
                                        feature_names=[name], pooling=pooling_of(name, mode), **config)
        super().__init__(DynamicEmbeddingBagCollection([cfg], is_weighted=mode == "sum", device=device,
                                                       fused_params=fused_params),
                         mode, include_last_offset)

    def __len__(self) -> int:
        return self.collection.table_size(self.config.name)

    def forward(self, input, offsets=None, per_sample_weights=None):
        out = super().forward(input, offsets, per_sample_weights)
        self.collection.count_step()
        return out


class _Lookup:
    """nn.Embedding's forward for a bag module: each id its own bag."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor) or input.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"table '{self.config.name}': input must be an int32 or int64 tensor")
        ids = input.reshape(-1)
        out = super().forward(ids, torch.arange(ids.numel(), device=ids.device))
        return out.view(*input.shape, out.shape[-1])


class HashedEmbedding(_Lookup, HashedEmbeddingBag):
    """A hashed table as an `nn.Embedding`: `forward(input)` gives [*input.shape, dim].

    Example:
        >>> emb = HashedEmbedding(1_000_000, 16, compression=0.01)
        >>> emb(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 16])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, compression: float = 0.125,
                 hash_mode: str = "block", name: str = "hashed", device: Optional[torch.device] = None,
                 **config) -> None:
        super().__init__(num_embeddings, embedding_dim, compression, mode="sum", hash_mode=hash_mode, name=name,
                         device=device, **config)


class QREmbedding(_Lookup, QREmbeddingBag):
    """A QR table as an `nn.Embedding`: `forward(input)` gives [*input.shape, dim]."""

    def __init__(self, num_categories: int, embedding_dim: int, num_collisions: int = 0, operation: str = "mult",
                 name: str = "qr", device: Optional[torch.device] = None, **config) -> None:
        super().__init__(num_categories, embedding_dim, num_collisions, operation, mode="sum", name=name,
                         device=device, **config)


class DynamicEmbedding(_Lookup, DynamicEmbeddingBag):
    """A dynamic table as an `nn.Embedding`: any int64 id, `forward(input)` gives
    [*input.shape, dim]."""

    def __init__(self, embedding_dim: int, num_embeddings: int = 1 << 20, name: str = "dynamic",
                 device: Optional[torch.device] = None, fused_params: Optional[dict] = None, **config) -> None:
        super().__init__(embedding_dim, mode="sum", num_embeddings=num_embeddings, name=name, device=device,
                         fused_params=fused_params, **config)
