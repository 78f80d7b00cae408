"""Dynamic hashtable tables, in one home: config, kind, rows and their index, admission,
eviction, initializers, the in-backward optimizer, checkpoints, and the collection."""

from torchrec_ext.modules.dynamic.admission import (
    AdmissionPolicy,
    AlwaysAdmit,
    FrequencyAdmission,
    ProbabilisticAdmission,
)
from torchrec_ext.modules.dynamic.checkpoint import bucket_entries, bucket_key, load_buckets
from torchrec_ext.modules.dynamic.collection import DynamicEmbeddingBagCollection, DynamicTable
from torchrec_ext.modules.dynamic.config import STORAGE_DTYPES, DynamicEmbeddingBagConfig
from torchrec_ext.modules.dynamic.eviction import (
    EvictionPolicy,
    L2NormEviction,
    LFUEviction,
    LRUEviction,
    RowView,
    TTLEviction,
)
from torchrec_ext.modules.dynamic.fused_update import DynamicFusedUpdate
from torchrec_ext.modules.dynamic.hash_table import HashTable, TableFullError
from torchrec_ext.modules.dynamic.initializers import Constant, Initializer, Normal, TruncatedNormal, Uniform
from torchrec_ext.modules.dynamic.kind import KEY_OVERHEAD_BYTES, DynamicTableKind, new_rows, planned_rows
from torchrec_ext.modules.dynamic.rows import DynamicRows, KeyedRows, Lookup, bucket_of, lookup_batch
from torchrec_ext.modules.dynamic.shared import release_shared, shared_rows
from torchrec_ext.modules.table_kind import register_table_kind

register_table_kind(DynamicEmbeddingBagConfig, DynamicTableKind())
