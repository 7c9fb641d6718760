"""PKSampler: P×K invariants, reference semantics, determinism."""

import random
from collections import Counter, defaultdict

import numpy as np
import pytest

from reidbench.harness.data.samplers.pk import PKSampler


def _pids(counts: dict[int, int]) -> list[int]:
    """Dataset pid list with images of different ids interleaved (indices are not grouped)."""
    pids = [pid for pid, n in counts.items() for _ in range(n)]
    random.Random(0).shuffle(pids)
    return pids


COUNTS = {3: 1, 5: 2, 8: 3, 11: 4, 12: 5, 20: 7, 21: 8, 30: 9, 31: 12, 40: 4, 41: 6}


def test_every_batch_is_p_distinct_ids_times_k():
    pids = _pids(COUNTS)
    sampler = PKSampler(pids, ids_per_batch=3, imgs_per_id=4, seed=1)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) > 0
        for batch in batches:
            assert len(batch) == 12  # never a partial batch
            ids = [pids[i] for i in batch]
            # grouped by identity: K consecutive indices per id, P distinct ids
            groups = [ids[j:j + 4] for j in range(0, 12, 4)]
            assert all(len(set(g)) == 1 for g in groups)
            assert len({g[0] for g in groups}) == 3


def test_identity_with_fewer_than_k_images_is_drawn_with_replacement():
    pids = _pids(COUNTS)
    sampler = PKSampler(pids, ids_per_batch=3, imgs_per_id=4, seed=2)
    only_index_of_3 = pids.index(3)
    indices_of_5 = {i for i, p in enumerate(pids) if p == 5}
    seen_3 = seen_5 = 0
    for epoch in range(30):
        sampler.set_epoch(epoch)
        for batch in sampler:
            chunk_3 = [i for i in batch if pids[i] == 3]
            chunk_5 = [i for i in batch if pids[i] == 5]
            if chunk_3:
                seen_3 += 1
                assert chunk_3 == [only_index_of_3] * 4
            if chunk_5:
                seen_5 += 1
                assert len(chunk_5) == 4 and set(chunk_5) <= indices_of_5
        # an id with < K images has exactly one chunk per epoch: at most one appearance
    assert seen_3 > 0 and seen_5 > 0


def test_images_appear_at_most_once_and_in_whole_chunks():
    pids = _pids(COUNTS)
    sampler = PKSampler(pids, ids_per_batch=3, imgs_per_id=4, seed=3)
    for epoch in range(10):
        sampler.set_epoch(epoch)
        uses = Counter(i for batch in sampler for i in batch)
        per_id = defaultdict(int)
        for index, n in uses.items():
            if COUNTS[pids[index]] >= 4:
                assert n == 1  # no repeats within an epoch for ids with >= K images
            per_id[pids[index]] += n
        for pid, used in per_id.items():
            if COUNTS[pid] >= 4:
                assert used % 4 == 0 and used <= COUNTS[pid] - COUNTS[pid] % 4


def test_all_chunks_used_when_identities_run_out_together():
    # Two ids with 10 images each, P=2, K=4: both ids are in every batch, so each contributes
    # 2 chunks of 4 (2 images of each dropped as the incomplete remainder) and then the epoch ends.
    pids = [0] * 10 + [1] * 10
    sampler = PKSampler(pids, ids_per_batch=2, imgs_per_id=4, seed=0)
    batches = list(sampler)
    assert len(batches) == 2
    used = Counter(i for b in batches for i in b)
    assert set(used.values()) == {1}
    assert sum(1 for i in used if pids[i] == 0) == 8 and sum(1 for i in used if pids[i] == 1) == 8
    # Four ids with exactly K images: every image exactly once, in 2 batches.
    pids = [7] * 4 + [8] * 4 + [9] * 4 + [10] * 4
    batches = list(PKSampler(pids, 2, 4, seed=5))
    assert len(batches) == 2 and sorted(i for b in batches for i in b) == list(range(16))
    # Five ids with one chunk each and P=2: two batches, the fifth id is left over.
    assert len(PKSampler([0, 1, 2, 3, 4], 2, 1, seed=0)) == 2


def test_deterministic_per_seed_and_epoch_and_len_exact():
    pids = _pids(COUNTS)
    a = PKSampler(pids, 3, 4, seed=11)
    b = PKSampler(list(pids), 3, 4, seed=11)
    c = PKSampler(pids, 3, 4, seed=12)
    a.set_epoch(4)
    b.set_epoch(4)
    c.set_epoch(4)
    assert list(a) == list(b)
    assert list(a) != list(c)
    epoch4 = list(a)
    a.set_epoch(5)
    assert list(a) != epoch4
    a.set_epoch(4)
    assert list(a) == epoch4  # re-visiting an epoch gives the same batches
    assert a.batches_for_epoch(5) == list(PKSampler(pids, 3, 4, seed=11).batches_for_epoch(5))
    for epoch in range(6):
        a.set_epoch(epoch)
        assert len(a) == len(list(a))


def _reference_num_batches(pids, p, k, rng: random.Random) -> int:
    """Independent transcription of the reference RandomIdentitySampler, counting batches."""
    index_dic = defaultdict(list)
    for index, pid in enumerate(pids):
        index_dic[pid].append(index)
    chunks = {}
    for pid, idxs in index_dic.items():
        idxs = list(idxs)
        if len(idxs) < k:
            idxs = [rng.choice(idxs) for _ in range(k)]
        rng.shuffle(idxs)
        chunks[pid] = len(idxs) // k
    available = list(index_dic)
    batches = 0
    while len(available) >= p:
        for pid in rng.sample(available, p):
            chunks[pid] -= 1
            if chunks[pid] == 0:
                available.remove(pid)
        batches += 1
    return batches


def test_batch_count_distribution_matches_reference_algorithm():
    pids = _pids(COUNTS)
    sampler = PKSampler(pids, 3, 4, seed=0)
    ours = [len(sampler.batches_for_epoch(e)) for e in range(400)]
    rng = random.Random(123)
    ref = [_reference_num_batches(pids, 3, 4, rng) for _ in range(400)]
    # 28 chunks in total: at most 9 batches; the random draw decides how many ids run dry first.
    assert max(ours) <= 28 // 3
    assert abs(np.mean(ours) - np.mean(ref)) < 0.15
    assert Counter(ours).keys() == Counter(ref).keys()


@pytest.mark.parametrize("kwargs, message", [
    (dict(ids_per_batch=1, imgs_per_id=4), "ids_per_batch must be >= 2"),
    (dict(ids_per_batch=2, imgs_per_id=0), "imgs_per_id must be >= 1"),
    (dict(ids_per_batch=20, imgs_per_id=4), "only 11 identities"),
])
def test_validation_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PKSampler(_pids(COUNTS), seed=0, **kwargs)
