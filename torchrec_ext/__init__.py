"""torchrec_ext: embedding tables TorchRec does not have, planned and sharded by TorchRec.

The collections are imported lazily, so `torchrec_ext.ops` (the native ops alone) loads
on machines that have torch but not torchrec/fbgemm (e.g. the GPU check).
"""

__version__ = "0.2.0"

_EXPORTS = {
    "HashedEmbeddingBagConfig": "torchrec_ext.modules.hashed",
    "HashedEmbeddingBagCollection": "torchrec_ext.modules.hashed",
    "QREmbeddingBagConfig": "torchrec_ext.modules.qr",
    "QREmbeddingBagCollection": "torchrec_ext.modules.qr",
    "DynamicEmbeddingBagConfig": "torchrec_ext.modules.dynamic",
    "DynamicEmbeddingBagCollection": "torchrec_ext.modules.dynamic",
    "HashTable": "torchrec_ext.modules.dynamic",
    "TableFullError": "torchrec_ext.modules.dynamic",
    "ExtEmbeddingBagCollection": "torchrec_ext.modules.collection_base",
    "TableKind": "torchrec_ext.modules.table_kind",
    "FixedStateKind": "torchrec_ext.modules.table_kind",
    "StatePiece": "torchrec_ext.modules.table_kind",
    "register_table_kind": "torchrec_ext.modules.table_kind",
    "table_kind": "torchrec_ext.modules.table_kind",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'torchrec_ext' has no attribute {name!r}")
