"""Silences the TorchRec / torch warnings that tell a user of this example nothing: they
name deprecations inside TorchRec, planner internals, or checks that do not apply to
torchrec_ext's tables (a dynamic table takes any int64 id, so TorchRec's id-range check
of its placeholder num_embeddings always fires). Applied at the example's entry (and in
each worker process), never by the library itself."""

from __future__ import annotations

import logging
import warnings

_WARNINGS = [
    (FutureWarning, r"`broadcast_buffers` is deprecated"),
    (FutureWarning, r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated"),
    (FutureWarning, r"HeuristicalStorageReservation is known to cause issues"),
    (UserWarning, r"fbgemm::.*an autograd kernel was not registered"),
]

# (logger, message start) pairs of TorchRec log records that are dropped.
_RECORDS = [
    ("torchrec.distributed.utils", "Sharding Type is data_parallel, caching params will be ignored"),
    ("torchrec.distributed.planner.types", "The topology was constructed directly"),
    ("torchrec.distributed.planner.storage_reservations", "There is a known issue with TorchRec's dense tensor"),
    ("torchrec.sparse.jagged_tensor_validator", "Feature "),
    ("torch.fx._symbolic_trace", "is_fx_tracing will return true"),
    ("root", "Sharding spec not found for"),  # a data-parallel table has none, by design
]


class _DropKnown(logging.Filter):
    def __init__(self, prefixes):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_known_warnings() -> None:
    for category, pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    by_logger = {}
    for name, prefix in _RECORDS:
        by_logger.setdefault(name, []).append(prefix)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger() if name == "root" else logging.getLogger(name)
        logger.addFilter(_DropKnown(prefixes))
