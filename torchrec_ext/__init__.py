"""torchrec_ext: embedding tables TorchRec does not have, planned and sharded by TorchRec.

The collections are imported lazily, so `torchrec_ext.ops` (the native ops alone) loads
on machines that have torch but not torchrec/fbgemm (e.g. the GPU check).
"""

_EXPORTS = {
    "HashedEmbeddingBagConfig": "torchrec_ext.modules.hashed_embedding_bag",
    "HashedEmbeddingBagCollection": "torchrec_ext.modules.hashed_embedding_bag",
    "QREmbeddingBagConfig": "torchrec_ext.modules.qr_embedding_bag",
    "QREmbeddingBagCollection": "torchrec_ext.modules.qr_embedding_bag",
    "DynamicEmbeddingBagConfig": "torchrec_ext.modules.dynamic_embedding_bag",
    "DynamicEmbeddingBagCollection": "torchrec_ext.modules.dynamic_embedding_bag",
    "HashTable": "torchrec_ext.modules.hash_table",
    "TableFullError": "torchrec_ext.modules.hash_table",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'torchrec_ext' has no attribute {name!r}")
