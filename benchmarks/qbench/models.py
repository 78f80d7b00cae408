"""The two models of the quality benchmark, each over collections from `tables.build`.

* `MatrixFactorization`: score(u, i) = <user vector, item vector>, trained with binary
  cross-entropy on each positive and `negatives` uniformly sampled items.
* `DLRM`: TorchRec's DenseArch / InteractionArch / OverArch over the 26 Criteo features;
  features with at least `large` values use the kind under test, the others a standard EBC
  (as a user would compress only the large tables).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.models.dlrm import DenseArch, InteractionArch, OverArch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from .tables import TableSpec, build, embedding_bytes


def one_id_per_bag(features: Sequence[str], ids: torch.Tensor) -> KeyedJaggedTensor:
    """ids [B, F] -> a KJT with one id per (feature, sample) bag."""
    b, f = ids.shape
    return KeyedJaggedTensor(keys=list(features), values=ids.t().reshape(-1).contiguous(),
                             lengths=torch.ones(b * f, dtype=torch.int32), stride=b)


class MatrixFactorization(torch.nn.Module):
    def __init__(self, kind: str, num_users: int, num_items: int, dim: int, factor: float,
                 fused_params=None) -> None:
        super().__init__()
        self.users = build(kind, [TableSpec("user", num_users, "user")], dim, factor, fused_params)
        self.items = build(kind, [TableSpec("item", num_items, "item")], dim, factor, fused_params)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.users(one_id_per_bag(["user"], users.view(-1, 1)))["user"]

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.items(one_id_per_bag(["item"], items.reshape(-1, 1)))["item"]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users [B], items [B, K] -> scores [B, K]."""
        u = self.user_vectors(users)
        v = self.item_vectors(items).view(items.shape[0], items.shape[1], -1)
        return (u.unsqueeze(1) * v).sum(-1)

    def embedding_bytes(self) -> int:
        return embedding_bytes(self.users) + embedding_bytes(self.items)


class DLRM(torch.nn.Module):
    def __init__(self, kind: str, vocab: Sequence[int], dim: int, factor: float, large: int,
                 num_dense: int, fused_params=None) -> None:
        super().__init__()
        self.features = [f"c{j}" for j in range(len(vocab))]
        small = [EmbeddingBagConfig(name=f"t_{f}", num_embeddings=n, embedding_dim=dim, feature_names=[f])
                 for f, n in zip(self.features, vocab) if n < large or kind == "full"]
        big = [TableSpec(f"t_{f}", n, f) for f, n in zip(self.features, vocab) if n >= large and kind != "full"]
        self.collections = torch.nn.ModuleList()
        self.collection_features: List[List[str]] = []
        if small:
            self.collections.append(EmbeddingBagCollection(tables=small))
            self.collection_features.append([c.feature_names[0] for c in small])
        if big:
            self.collections.append(build(kind, big, dim, factor, fused_params))
            self.collection_features.append([s.feature for s in big])
        self.dense_arch = DenseArch(num_dense, [64, dim])
        self.interaction = InteractionArch(num_sparse_features=len(vocab))
        f = len(vocab)
        self.over_arch = OverArch(dim + f + f * (f - 1) // 2, [64, 32, 1])

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        kjt = one_id_per_bag(self.features, sparse)
        pooled = {}
        for coll in self.collections:
            pooled.update(coll(kjt).to_dict())
        emb = torch.stack([pooled[f] for f in self.features], dim=1)
        return self.over_arch(self.interaction(self.dense_arch(dense), emb)).squeeze(-1)

    def embedding_bytes(self) -> int:
        return sum(embedding_bytes(c) for c in self.collections)
