"""A table kind defined outside torchrec_ext, as a user would write one: a plain [n, d]
table whose pooled rows are multiplied by a constant `scale`, with PyTorch kernels. It
registers with torchrec_ext's public registry only; nothing in torchrec_ext.sharding
knows it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchrec import EmbeddingBagConfig

from torchrec_ext import ExtEmbeddingBagCollection, FixedStateKind, StatePiece, register_table_kind


@dataclass
class ScaledEmbeddingBagConfig(EmbeddingBagConfig):
    scale: float = 2.0


def coordinate_values(rows: int, cols: int, row0: int, col0: int) -> torch.Tensor:
    r = torch.arange(row0, row0 + rows, dtype=torch.float64).unsqueeze(1)
    c = torch.arange(col0, col0 + cols, dtype=torch.float64).unsqueeze(0)
    return (0.1 * torch.sin(r * 1.7 + c * 0.3)).float()


class ScaledTableKind(FixedStateKind):
    def parameter_shape(self, config):
        return (config.num_embeddings, config.embedding_dim)

    def id_bounds(self, config):
        return (0, config.num_embeddings)

    def rw_id_space(self, config, block_rows, world_size):
        return block_rows * world_size

    def unsupported_sharding(self, config, sharding_type):
        return None if sharding_type == "table_wise" else "the toy kind is planned table-wise only"

    def state_names(self, config):
        return ["weight"]

    def state_shape(self, config, name):
        return self.parameter_shape(config)

    def state_pieces(self, config, sharding_type, offsets, sizes):
        return [StatePiece("weight", tuple(offsets), tuple(sizes))]

    def init_piece_(self, config, tensor, piece):
        with torch.no_grad():
            return tensor.copy_(coordinate_values(*piece.sizes, *piece.offsets))

    def make_shard_state(self, config, pieces, offsets, sizes):
        return config.scale

    def _bags(self, t, values, offsets, table_bags):
        lo, hi = table_bags[t], table_bags[t + 1]
        start = int(offsets[lo])
        return values[start:int(offsets[hi])], offsets[lo:hi + 1] - start

    def pool_batch(self, states, weights, values, offsets, psw, table_bags, poolings):
        out = []
        for t, scale in enumerate(states):
            ids, offs = self._bags(t, values, offsets, table_bags)
            out.append(scale * F.embedding_bag(ids, weights[t], offs, mode="mean" if poolings[t] else "sum",
                                               include_last_offset=True))
        return out

    def backward_batch(self, states, grads, weights, values, offsets, psw, table_bags, poolings, need_psw,
                       kept=None):
        result = []
        for t, scale in enumerate(states):
            ids, offs = self._bags(t, values, offsets, table_bags)
            lengths = offs[1:] - offs[:-1]
            bag = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
            g = grads[t][bag] * scale
            if poolings[t]:
                g = g / lengths[bag].clamp(min=1).unsqueeze(1)
            dense = torch.zeros_like(weights[t]).index_add_(0, ids, g)
            result.append([(None, dense)])
        return result, torch.empty(0)


register_table_kind(ScaledEmbeddingBagConfig, ScaledTableKind())


def reference_pool(weight: torch.Tensor, scale: float, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The toy table's function, written out: scale * the sum of each bag's rows."""
    out, i = [], 0
    for n in lengths.tolist():
        out.append(scale * weight[ids[i:i + n]].sum(0))
        i += n
    return torch.stack(out)


__all__ = ["ScaledEmbeddingBagConfig", "ScaledTableKind", "ExtEmbeddingBagCollection", "coordinate_values",
           "reference_pool"]
