"""The native hash index (HashTable) against a Python dict, on every device."""

import threading

import pytest
import torch
from batches import DEVICES

from torchrec_ext import HashTable, TableFullError

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def check_against(table: HashTable, ref: dict) -> None:
    keys, rows = table.export()
    assert len(table) == len(ref) == keys.numel()
    assert dict(zip(keys.tolist(), rows.tolist())) == ref
    assert len(set(rows.tolist())) == len(ref)  # one row per key, never shared


@pytest.mark.parametrize("device", DEVICES)
def test_random_batches_match_a_dict(device):
    g = torch.Generator().manual_seed(0)
    table = HashTable("t", device=device)
    ref = {}
    for step in range(60):
        # narrow key range: many duplicates within and across batches; extremes included
        keys = torch.randint(-300, 300, (int(torch.randint(1, 400, (1,), generator=g)),), generator=g)
        keys[:2] = torch.tensor([I64_MIN, I64_MAX])
        op = step % 3
        if op < 2:
            rows, inserted = table.find_or_insert(keys.to(device))
            rows, inserted = rows.cpu(), inserted.cpu()
            new = {}
            for i, k in enumerate(keys.tolist()):
                if k in ref:
                    assert rows[i] == ref[k] and not inserted[i]
                elif k in new:
                    assert rows[i] == new[k] and not inserted[i]
                else:
                    assert inserted[i]
                    new[k] = int(rows[i])
            ref.update(new)
        else:
            gone = keys[::2]
            freed = table.erase(gone.to(device)).cpu()
            expect = {ref.pop(k) for k in set(gone.tolist()) if k in ref}
            assert set(freed.tolist()) == expect and freed.numel() == len(expect)
        found = table.find(keys.to(device)).cpu()
        assert found.tolist() == [ref.get(k, -1) for k in keys.tolist()]
        check_against(table, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_growth_keeps_every_row_and_reuses_freed_rows(device):
    table = HashTable("t", device=device)
    keys = torch.arange(0, 200_000, dtype=torch.long) * 7919 - 10**12
    rows, inserted = table.find_or_insert(keys.to(device))
    assert table.slots >= 2 * keys.numel() and bool(inserted.all())
    assert sorted(rows.cpu().tolist()) == list(range(keys.numel()))  # dense rows, none lost
    torch.testing.assert_close(table.find(keys.to(device)), rows)
    freed = table.erase(keys[:1000].to(device))
    again, _ = table.find_or_insert(torch.arange(5, 1005).to(device))
    assert set(again.cpu().tolist()) == set(freed.cpu().tolist())  # freed rows first
    assert table.rows_in_use_bound == keys.numel()


@pytest.mark.parametrize("device", DEVICES)
def test_int64_extremes_and_sentinel_like_keys_are_ordinary(device):
    keys = torch.tensor([I64_MIN, I64_MAX, -1, -2, -3, 0], dtype=torch.long)
    table = HashTable("t", device=device)
    rows, inserted = table.find_or_insert(keys.to(device))
    assert bool(inserted.all()) and len(set(rows.tolist())) == 6
    assert table.find(keys.to(device)).tolist() == rows.tolist()
    table.erase(keys[:1].to(device))
    assert table.find(keys.to(device)).tolist() == [-1] + rows.tolist()[1:]


def test_threads_inserting_overlapping_keys_get_one_row_per_key():
    torch.set_num_threads(2)
    table = HashTable("t")
    results = [None] * 8
    barrier = threading.Barrier(8)

    def worker(i):
        g = torch.Generator().manual_seed(i)
        keys = torch.randint(0, 5000, (20_000,), generator=g)  # heavy overlap between threads
        barrier.wait()
        results[i] = (keys, table.find_or_insert(keys)[0])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    seen = {}
    for keys, rows in results:
        for k, r in zip(keys.tolist(), rows.tolist()):
            assert seen.setdefault(k, r) == r  # every thread got the same row for a key
    assert len(table) == len(seen) and len(set(seen.values())) == len(seen)


def test_one_batch_of_duplicates_races_inside_the_kernel():
    torch.set_num_threads(2)
    table = HashTable("t")
    keys = torch.randint(0, 64, (100_000,), generator=torch.Generator().manual_seed(1))
    rows, inserted = table.find_or_insert(keys)
    assert int(inserted.sum()) == torch.unique(keys).numel() == len(table)
    for k in torch.unique(keys).tolist():
        assert torch.unique(rows[keys == k]).numel() == 1


@pytest.mark.parametrize("device", DEVICES)
def test_full_table_raises_and_keeps_what_it_had(device):
    table = HashTable("users", max_rows=10, device=device)
    table.find_or_insert(torch.arange(8).to(device))
    before = table.export()
    with pytest.raises(TableFullError, match=r"table 'users' is full: it holds 8 of max 10 rows .* 3 new ids"):
        table.find_or_insert(torch.tensor([1, 100, 101, 102, 100]).to(device))
    after = table.export()
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    rows, _ = table.find_or_insert(torch.tensor([100, 101, 100, 3]).to(device))  # fits: 2 new
    assert len(table) == 10


def test_bad_keys_are_refused_with_the_table_name():
    table = HashTable("items")
    with pytest.raises(TypeError, match=r"table 'items': find_or_insert needs int32 or int64 keys"):
        table.find_or_insert(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"table 'items': max_rows must be positive"):
        HashTable("items", max_rows=0)
