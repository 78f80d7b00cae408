"""Kept for existing imports: `torchrec_ext.modules.dynamic.hash_table`."""

from torchrec_ext.modules.dynamic.hash_table import HashTable, TableFullError  # noqa: F401
