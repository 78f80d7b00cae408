"""`DynamicRows`: the rows of one dynamic table (or of one shard of it), and their lifecycle.

A `HashTable` maps keys to row numbers; the rows live in blocks of `block_size` rows,
added as the table grows, so no row ever moves. Next to the values, each row has:
  * optimizer state (blocks of their own, one set per state tensor), zeroed when a row is
    created, so a reused slot starts fresh;
  * metadata: the step it was created, last looked up and last changed, and how often it
    was looked up (for eviction, incremental export and statistics).
A new row gets its initial values from (key, global column) alone (initializers.py),
which makes a table the same function of its ids under every plan. Admission decides which
unseen ids get a row; eviction which rows go. `KeyedRows` is how rows travel in a state
dict or a delta.

Threads may share a table: each `DynamicRows` has a re-entrant lock that its public
operations (lookups with their inserts and evictions, updates, export, load) hold, so
each is atomic with respect to the others; `lookup_batch` takes its stores' locks in one
order. Callers that pool rows after a lookup hold `lock` over both (no eviction in between).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from torchrec_ext.modules.dynamic.admission import AdmissionPolicy, AlwaysAdmit
from torchrec_ext.modules.dynamic.eviction import EvictionPolicy, RowView
from torchrec_ext.modules.dynamic.hash_table import HashTable
from torchrec_ext.modules.dynamic.initializers import Initializer
from torchrec_ext.modules.state_memory import allocate, check_fits
from torchrec_ext.ops import dynamic as dyn_ops

logger = logging.getLogger(__name__)

_ops = torch.ops.torchrec_ext
META = ("created", "last_seen", "updated", "count")


@dataclass
class KeyedRows:
    """Rows of a dynamic table as a state-dict value: keys [n] (sorted), values [n, dim],
    per-row optimizer state and metadata (name -> [n, ...]), and the ids an admission
    policy is still counting (pending_keys, pending_counts). Also a delta's `deleted` keys.

    Not a tensor, so torch.distributed.checkpoint stores it as one object per entry."""

    keys: torch.Tensor
    values: torch.Tensor
    optimizer: Dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: Dict[str, torch.Tensor] = field(default_factory=dict)
    pending_keys: Optional[torch.Tensor] = None
    pending_counts: Optional[torch.Tensor] = None
    deleted: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.keys.numel())

    def select(self, mask: torch.Tensor) -> "KeyedRows":
        return KeyedRows(self.keys[mask], self.values[mask], {k: v[mask] for k, v in self.optimizer.items()},
                         {k: v[mask] for k, v in self.metadata.items()})

    def cpu(self) -> "KeyedRows":
        mv = lambda t: None if t is None else t.cpu()  # noqa: E731
        return KeyedRows(self.keys.cpu(), self.values.cpu(), {k: v.cpu() for k, v in self.optimizer.items()},
                         {k: v.cpu() for k, v in self.metadata.items()}, mv(self.pending_keys),
                         mv(self.pending_counts), mv(self.deleted))


def bucket_of(keys: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Checkpoint / routing bucket of each key (a fixed function of the key)."""
    return dyn_ops.key_hash(keys) % num_buckets


@dataclass
class Lookup:
    """Rows of a batch's ids and the blocks they index. Ids not admitted in training read
    their initializer values from scratch rows at `real_rows` and beyond (no update)."""

    rows: torch.Tensor
    blocks: List[torch.Tensor]
    real_rows: int


def lowest_first(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The first k (at least) of `argsort(scores, stable=True)`, without sorting them all:
    every index whose score is at most the k-th lowest, stably sorted. At capacity a table
    evicts a few rows per step out of many, so sorting every row's score per insert would
    dominate the step."""
    if k >= scores.numel():
        return torch.argsort(scores, stable=True)
    kth = torch.topk(scores, k, largest=False, sorted=False).values.max()
    cand = torch.nonzero(scores <= kth).squeeze(1)
    return cand[torch.argsort(scores[cand], stable=True)]


def _locked(method):
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return run


class DynamicRows:
    def __init__(self, name: str, dim: int, dtype: torch.dtype, device: torch.device,
                 block_size: int, initial_capacity: int, max_capacity: Optional[int],
                 initializer: Initializer, seed: int, col_offset: int = 0,
                 trainable_blocks: bool = False, admission: Optional[AdmissionPolicy] = None,
                 eviction: Optional[EvictionPolicy] = None, eviction_interval: int = 0,
                 on_full: str = "raise", delta_window: int = 10_000) -> None:
        self.name, self.dim, self.dtype, self.device = name, dim, dtype, torch.device(device)
        self.block_size, self.initializer, self.seed = block_size, initializer, seed
        self.col_offset = col_offset
        self.initial_capacity = initial_capacity
        self.trainable_blocks = trainable_blocks
        self.admission = (admission or AlwaysAdmit()).fresh()
        self.eviction, self.eviction_interval = eviction, eviction_interval
        self.on_full = on_full
        self.table = HashTable(name, initial_capacity, max_capacity, self.device)
        self.blocks: List[torch.Tensor] = []
        self.state_widths: Dict[str, int] = {}
        self.state_blocks: Dict[str, List[torch.Tensor]] = {}
        self.meta = {m: torch.zeros(0, dtype=torch.long, device=self.device) for m in META}
        self.stats = {"admitted": 0, "rejected": 0, "evicted": 0}
        self.step = 0  # the training step of the current / last lookup
        # (step, keys erased): the last delta_window steps' worth, for export_delta
        self.eviction_log: List[Tuple[int, torch.Tensor]] = []
        self.delta_window = delta_window
        self.log_complete_from = 0  # the log holds every erase at or after this step
        self.lock = threading.RLock()
        self._cover(max(initial_capacity, 1))  # kernels need one block, even for no rows

    # pickling / deepcopy: the lock is recreated
    def __getstate__(self):
        state = dict(self.__dict__)
        del state["lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.lock = threading.RLock()

    # --- storage ---
    @property
    def missing_value(self) -> float:
        return float(self.initializer.eval_value)

    @property
    def max_rows(self) -> Optional[int]:
        return self.table.max_rows

    def __len__(self) -> int:
        return len(self.table)

    def _new_block(self, width: int, trainable: bool, dtype) -> torch.Tensor:
        b = torch.zeros(self.block_size, width, dtype=dtype, device=self.device)
        return torch.nn.Parameter(b) if trainable else b

    def _cover(self, rows: int) -> None:
        """Adds blocks (values, optimizer state) and metadata until rows [0, rows) exist.

        All or nothing: everything is allocated first (a size beyond the device raises a
        ValueError, a failed allocation a MemoryError), then added to the table.
        """
        blocks_needed = max(0, -(-rows // self.block_size) - len(self.blocks))
        n = (len(self.blocks) + blocks_needed) * self.block_size
        grow_meta = {m: max(n, 2 * t.numel()) for m, t in self.meta.items() if t.numel() < n}
        # optimizer state (fp32) for the new blocks and for any the old ones lack
        state_missing = {name: len(self.blocks) + blocks_needed - len(self.state_blocks.get(name, []))
                         for name in self.state_widths}
        nbytes = (blocks_needed * self.block_size * self.dim * self.dtype.itemsize + 8 * sum(grow_meta.values())
                  + sum(k * self.block_size * 4 * self.state_widths[s] for s, k in state_missing.items()))
        for s in self.state_widths:
            self.state_blocks.setdefault(s, [])
        if not nbytes:
            return
        what = f"rows (up to row {rows})"
        check_fits(self.name, what, nbytes, self.device)

        def make():
            new = [self._new_block(self.dim, self.trainable_blocks, self.dtype) for _ in range(blocks_needed)]
            state = {s: [self._new_block(self.state_widths[s], False, torch.float32) for _ in range(k)]
                     for s, k in state_missing.items()}
            meta = {m: torch.zeros(size, dtype=torch.long, device=self.device) for m, size in grow_meta.items()}
            return new, state, meta

        new, state, meta = allocate(self.name, what, nbytes, make)
        self.blocks.extend(new)
        for s, extra in state.items():
            self.state_blocks.setdefault(s, []).extend(extra)
        for m, grown in meta.items():
            # at least double: a table growing block by block copies its metadata
            # O(rows) times in all, not once per block (the kernels read it by row)
            grown[: self.meta[m].numel()] = self.meta[m]
            self.meta[m] = grown
        if new:
            logger.debug("table '%s': %d row blocks (%d rows allocated)", self.name, len(self.blocks),
                         len(self.blocks) * self.block_size)

    @_locked
    def set_optimizer_state(self, widths: Dict[str, int]) -> None:
        """Gives every row optimizer state of these widths (zeros), kept next to the row."""
        if self.state_widths and self.state_widths != widths:
            raise ValueError(f"table '{self.name}': rows already carry optimizer state {self.state_widths}")
        self.state_widths = dict(widths)
        self._cover(len(self.blocks) * self.block_size)

    def column_slice(self, full_dim: int) -> Optional[slice]:
        """The columns these rows hold of full-width rows (None: all of them)."""
        return None if self.dim == full_dim else slice(self.col_offset, self.col_offset + self.dim)

    def _raw_blocks(self) -> List[torch.Tensor]:
        return [b.data if isinstance(b, torch.nn.Parameter) else b for b in self.blocks]

    # --- lookups ---
    @_locked
    def lookup(self, keys: torch.Tensor, insert: bool, step: Optional[int] = None) -> Lookup:
        """Rows of the keys. Training (insert): absent keys the admission policy admits get
        a new, initialised row; the others read initializer values from scratch rows.
        Eval: absent keys are -1 (read as eval_value); nothing changes."""
        keys = keys.reshape(-1)
        return lookup_batch([self], keys, [0, keys.numel()], insert, [step])[1][0]

    def _begin_step(self, step: Optional[int]) -> None:
        """A training lookup at `step`: runs the eviction policy's expiry when it is due."""
        if step is not None:
            self.step = step
        self._trim_log()
        if self.eviction is not None and self.eviction_interval > 0 and self.step % self.eviction_interval == 0:
            self.evict()

    def _stamp(self, rows: torch.Tensor) -> None:
        """Marks rows as looked up now (repeats add to the count)."""
        if rows.numel():
            self.meta["last_seen"].index_fill_(0, rows, self.step)
            self.meta["count"].index_add_(0, rows, torch.ones_like(rows))

    def _fill_missing(self, keys: torch.Tensor, rows: torch.Tensor, refind: bool) -> List[torch.Tensor]:
        """Training: gives every absent key (row < 0) in `rows`, in place, a new row if the
        admission policy admits it, else a scratch row past the table holding its initial
        values (returned, as blocks); stamps the new rows. `refind`: another table of the
        batch shares these rows and may have inserted some of the keys since the find."""
        missing = rows < 0
        if refind:
            again = self.table.find(keys[missing])
            rows[missing] = again
            self._stamp(again[again >= 0])
            missing = rows < 0
            if not bool(missing.any()):
                return []
        uniq, inverse, counts = torch.unique(keys[missing], return_inverse=True, return_counts=True)
        admit = self.admission.admit(uniq, counts, self.step)
        if self.on_full == "reject":
            admit = self._fit_capacity(admit, counts, keys[~missing])
        uniq_rows = torch.empty_like(uniq)
        new = uniq[admit]
        if new.numel():
            uniq_rows[admit] = self._insert(new, protect=keys[~missing])
            self.admission.forget(new)
        real = len(self.blocks) * self.block_size  # insertion may have added blocks
        rejected = uniq[~admit]
        self.stats["rejected"] += int(rejected.numel())
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("table '%s' step %d: admitted %d new ids, rejected %d (totals %d / %d)", self.name,
                         self.step, int(new.numel()), int(rejected.numel()), self.stats["admitted"],
                         self.stats["rejected"])
        scratch: List[torch.Tensor] = []
        if rejected.numel():
            scratch = self._scratch(rejected)
            uniq_rows[~admit] = torch.arange(rejected.numel(), device=keys.device) + real
        filled = uniq_rows[inverse]
        rows[missing] = filled
        self._stamp(filled[(filled >= 0) & (filled < real)])
        return scratch

    def _fit_capacity(self, admit: torch.Tensor, counts: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """`admit` cut to the new ids the capacity can take once eviction (if capacity-bound)
        has freed every row the batch does not use (`present`: its keys that have rows); the
        most frequent in the batch stay, ties by the smaller key, so every column shard of a
        table, seeing the same ids, keeps the same ones."""
        cap = self.table.max_rows
        if cap is None:
            return admit
        held = len(self)
        if self.eviction is not None and self.eviction.capacity_bound:
            held = int(torch.unique(present).numel())
        room = max(0, cap - held)
        idx = torch.nonzero(admit).flatten()
        if idx.numel() <= room:
            return admit
        keep = idx[torch.argsort(counts[idx], descending=True, stable=True)[:room]]
        admit = torch.zeros_like(admit)
        admit[keep] = True
        logger.debug("table '%s' step %d: full, %d new ids read as initial values", self.name, self.step,
                     int(idx.numel() - room))
        return admit

    def _scratch(self, keys: torch.Tensor) -> List[torch.Tensor]:
        """Blocks holding the initializer values of ids that have no row."""
        n_blocks = -(-keys.numel() // self.block_size)
        blocks = [torch.zeros(self.block_size, self.dim, dtype=self.dtype, device=self.device)
                  for _ in range(n_blocks)]
        kind, a, b = self.initializer.native()
        _ops.block_rows_init_(blocks, torch.arange(keys.numel(), device=self.device), keys, kind, a, b,
                              self.seed, self.col_offset)
        return blocks

    def _insert(self, new: torch.Tensor, protect: torch.Tensor) -> torch.Tensor:
        """Creates rows for the distinct, absent keys `new` and returns them, evicting first
        if the policy is capacity-bound and the table is full (never a key in `protect`)."""
        cap = self.table.max_rows
        if cap is not None and len(self) + new.numel() > cap and self.eviction is not None \
                and self.eviction.capacity_bound:
            need = len(self) + new.numel() - cap
            view = self.row_view()
            order = lowest_first(self.eviction.scores(view, self.step), need + protect.numel())
            order = order[~torch.isin(view.keys[order], protect)]
            if order.numel() >= need:
                self.erase(view.keys[order[:need]])
        rows, _ = self.table.find_or_insert(new)  # every key is new: every row was created
        self._cover(self.table.rows_in_use_bound)
        kind, a, b = self.initializer.native()
        with torch.no_grad():
            _ops.block_rows_init_(self._raw_blocks(), rows, new, kind, a, b, self.seed, self.col_offset)
            for name, blocks in self.state_blocks.items():  # a reused slot starts fresh
                _ops.block_rows_scatter_(blocks, rows, torch.zeros(rows.numel(), self.state_widths[name],
                                                                   device=self.device), 1.0, False)
        for m in ("created", "last_seen", "updated"):
            self.meta[m][rows] = self.step
        self.meta["count"][rows] = 0
        self.stats["admitted"] += int(rows.numel())
        return rows

    # --- pooling and updates ---
    def pool(self, looked: Lookup, offsets, per_sample_weights, pooling: int) -> torch.Tensor:
        """Pooled rows; with trainable blocks, differentiable in them (dense gradients)."""
        blocks = self.blocks + looked.blocks[len(self.blocks):] if self.trainable_blocks else looked.blocks
        return dyn_ops.dynamic_bag(blocks, looked.rows, offsets, per_sample_weights, pooling, self.missing_value)

    @_locked
    def values(self, rows: torch.Tensor) -> torch.Tensor:
        """Float32 values of the given rows."""
        if rows.numel() == 0:
            return torch.empty(0, self.dim, device=self.device)
        return _ops.block_rows_gather(self._raw_blocks(), rows)

    @_locked
    def state(self, rows: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {n: (_ops.block_rows_gather(b, rows) if rows.numel() else
                    torch.empty(0, self.state_widths[n], device=self.device))
                for n, b in self.state_blocks.items()}

    @torch.no_grad()
    @_locked
    def write(self, rows: torch.Tensor, values: torch.Tensor, state: Dict[str, torch.Tensor]) -> None:
        """Sets values and optimizer state of distinct rows, stamping them as changed now."""
        if rows.numel() == 0:
            return
        _ops.block_rows_scatter_(self._raw_blocks(), rows, values, 1.0, False)
        for n, v in state.items():
            _ops.block_rows_scatter_(self.state_blocks[n], rows, v, 1.0, False)
        self.meta["updated"][rows] = self.step

    @_locked
    @torch.no_grad()
    def add_to_rows(self, rows: torch.Tensor, delta: torch.Tensor, alpha: float) -> None:
        """rows += alpha * delta (rows distinct)."""
        if rows.numel():
            _ops.block_rows_scatter_(self._raw_blocks(), rows, delta, alpha, True)
            self.meta["updated"].index_fill_(0, rows, self.step)

    # --- lifecycle ---
    @_locked
    def row_view(self) -> RowView:
        keys, rows = self.table.export()
        return RowView(keys=keys, last_seen=self.meta["last_seen"][rows], count=self.meta["count"][rows],
                       created=self.meta["created"][rows], values=lambda: self.values(rows))

    @_locked
    def evict(self) -> int:
        """Runs the eviction policy's expiry now; returns the number of rows removed."""
        if self.eviction is None:
            return 0
        view = self.row_view()
        mask = self.eviction.expired(view, self.step)
        if mask is None or not bool(mask.any()):
            return 0
        return self.erase(view.keys[mask])

    @_locked
    def erase(self, keys: torch.Tensor) -> int:
        freed = self.table.erase(keys)
        if freed.numel():
            self.stats["evicted"] += int(freed.numel())
            self.eviction_log.append((self.step, keys.clone()))
            logger.info("table '%s' step %d: evicted %d rows (%d held)", self.name, self.step,
                        int(freed.numel()), len(self))
        return int(freed.numel())

    def _trim_log(self) -> None:
        """Drops the erases older than delta_window steps (run as each step begins)."""
        floor = self.step - self.delta_window + 1
        if self.eviction_log and self.eviction_log[0][0] < floor:
            self.eviction_log = [(s, k) for s, k in self.eviction_log if s >= floor]
            self.log_complete_from = max(self.log_complete_from, floor)

    @_locked
    def statistics(self) -> Dict[str, float]:
        cap = self.table.max_rows
        allocated = len(self.blocks) * self.block_size
        return {"size": len(self), "capacity": cap if cap is not None else allocated,
                "allocated_rows": allocated, "load": len(self) / (cap if cap else max(allocated, 1)),
                "step": self.step, **self.stats}

    # --- state ---
    @_locked
    def export(self, since_step: Optional[int] = None) -> KeyedRows:
        """Every row held (keys sorted), or only those changed at or after since_step plus the
        keys erased since then (`deleted`)."""
        keys, rows = self.table.export()
        deleted = None
        if since_step is not None:
            if since_step < self.log_complete_from:
                raise ValueError(f"table '{self.name}': a delta since step {since_step} needs the keys erased "
                                 f"since then, kept only from step {self.log_complete_from} (delta_window "
                                 f"{self.delta_window} steps, now step {self.step}); export a full state dict "
                                 "instead, or raise delta_window")
            pick = self.meta["updated"][rows] >= since_step
            keys, rows = keys[pick], rows[pick]
            gone = [k for s, k in self.eviction_log if s >= since_step]
            deleted = torch.cat(gone).unique() if gone else torch.empty(0, dtype=torch.long, device=self.device)
            deleted = deleted[~torch.isin(deleted, keys)]
        out = KeyedRows(keys, self.values(rows), self.state(rows), {m: self.meta[m][rows] for m in META},
                        deleted=deleted)
        counted = self.admission.export_counts()
        if counted is not None:
            out.pending_keys, out.pending_counts = counted
        return out

    @_locked
    def keys(self) -> torch.Tensor:
        return self.table.export()[0]

    @_locked
    @torch.no_grad()
    def load(self, entry: KeyedRows, col_slice: Optional[slice] = None) -> None:
        """Inserts (or overwrites) the entry's rows: values, optimizer state, metadata."""
        keys = entry.keys.to(self.device)
        values = entry.values if col_slice is None else entry.values[:, col_slice]
        if values.dim() != 2 or values.shape[1] != self.dim or values.shape[0] != keys.numel():
            raise ValueError(f"table '{self.name}': cannot load {tuple(values.shape)} values for "
                             f"{keys.numel()} keys into rows of dim {self.dim}")
        if entry.deleted is not None and entry.deleted.numel():
            self.table.erase(entry.deleted.to(self.device))
        if entry.pending_keys is not None:
            self.admission.import_counts(entry.pending_keys.to(self.device), entry.pending_counts.to(self.device))
        if keys.numel() == 0:
            return
        rows, _ = self.table.find_or_insert(keys)
        self._cover(self.table.rows_in_use_bound)
        _ops.block_rows_scatter_(self._raw_blocks(), rows, values.to(self.device, torch.float32), 1.0, False)
        for name, blocks in self.state_blocks.items():
            v = entry.optimizer.get(name)
            if v is None:
                v = torch.zeros(keys.numel(), self.state_widths[name])
            elif col_slice is not None and v.shape[1] != 1:
                v = v[:, col_slice]
            _ops.block_rows_scatter_(blocks, rows, v.to(self.device, torch.float32), 1.0, False)
        for m in META:
            if m in entry.metadata:
                self.meta[m][rows] = entry.metadata[m].to(self.device)

    @_locked
    def clear(self) -> None:
        self.table.clear(self.initial_capacity)
        self.admission = self.admission.fresh()
        self.eviction_log.clear()
        self.log_complete_from = 0


def lookup_batch(stores: Sequence[DynamicRows], keys: torch.Tensor, key_ends: Sequence[int], insert: bool,
                 steps: Optional[Sequence[Optional[int]]] = None) -> Tuple[torch.Tensor, List[Lookup]]:
    """`DynamicRows.lookup` of many tables at once: store t looks up keys[key_ends[t] :
    key_ends[t + 1]] (at training step steps[t]). One native call finds every key and
    stamps the rows found; only tables with unseen ids (training) then take the
    per-table path that admits, inserts and initialises. Returns the rows of all keys
    (one tensor, in key order) and each store's Lookup (a view of them)."""
    device = stores[0].device
    keys = keys.to(device=device, dtype=torch.long)
    key_ends = [int(e) for e in key_ends]
    spans = list(zip(key_ends[:-1], key_ends[1:]))
    if device.type == "meta":  # shape-only (planning, tracing): no table to consult
        rows = torch.zeros_like(keys)
        return rows, [Lookup(rows[a:b], s.blocks, len(s.blocks) * s.block_size) for s, (a, b) in zip(stores, spans)]
    distinct = sorted({id(s): s for s in stores}.values(), key=id)  # one lock order for every caller
    with contextlib.ExitStack() as held:
        for s in distinct:
            held.enter_context(s.lock)
        return _lookup_locked(stores, distinct, keys, key_ends, spans, insert, steps)


def _lookup_locked(stores, distinct, keys, key_ends, spans, insert, steps):
    device = keys.device
    if insert:
        for s, step in zip(stores, steps or [None] * len(stores)):
            s._begin_step(step)
    with contextlib.ExitStack() as held:
        index = {id(s): held.enter_context(s.table.locked_index()) for s in distinct}
        stamps = ([s.meta["last_seen"] for s in stores], [s.meta["count"] for s in stores],
                  [s.step for s in stores]) if insert else ([], [], [])
        rows = _ops.hash_index_lookup_([index[id(s)][0] for s in stores], [index[id(s)][1] for s in stores],
                                       keys, key_ends, *stamps)
    if not insert:
        return rows, [Lookup(rows[a:b], s._raw_blocks(), len(s.blocks) * s.block_size)
                      for s, (a, b) in zip(stores, spans)]
    unseen = set()
    missing = (rows < 0).nonzero().squeeze(1)
    if missing.numel():
        bounds = torch.tensor(key_ends[1:], device=device)
        unseen = set(torch.bucketize(missing, bounds, right=True).unique().tolist())
    looked, filled = [], set()
    for t, (s, (a, b)) in enumerate(zip(stores, spans)):
        scratch: List[torch.Tensor] = []
        if t in unseen:
            scratch = s._fill_missing(keys[a:b], rows[a:b], refind=id(s) in filled)
            filled.add(id(s))
        looked.append(Lookup(rows[a:b], s._raw_blocks() + scratch, len(s.blocks) * s.block_size))
    return rows, looked
