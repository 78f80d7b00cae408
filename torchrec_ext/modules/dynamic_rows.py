"""Kept for existing imports: `torchrec_ext.modules.dynamic.rows`."""

from torchrec_ext.modules.dynamic.rows import *  # noqa: F401,F403
from torchrec_ext.modules.dynamic.rows import META, DynamicRows, KeyedRows, Lookup, bucket_of, lookup_batch  # noqa: F401
