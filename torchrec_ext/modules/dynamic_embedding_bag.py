"""Kept for existing imports: the dynamic tables live in `torchrec_ext.modules.dynamic`."""

from torchrec_ext.modules.dynamic import (  # noqa: F401
    KEY_OVERHEAD_BYTES,
    STORAGE_DTYPES,
    DynamicEmbeddingBagCollection,
    DynamicEmbeddingBagConfig,
    DynamicTable,
    bucket_entries,
    bucket_key,
    load_buckets,
    release_shared,
    shared_rows,
)
