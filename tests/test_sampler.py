"""Tests of ``qure.sampling.NegativeSampler``: no repeats per cycle, purity, uniformity."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qure
from qure import HardNegatives
from qure.sampling import NegativeSampler

# --------------------------------------------------------------------------------------------
# helpers


def make_bands(rows):
    """A HardNegatives whose band ``i`` is ``rows[i]`` (a list of gallery indices)."""
    rows = [list(r) for r in rows]
    sizes = [len(r) for r in rows]
    q = len(rows)
    return HardNegatives(
        indptr=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        indices=np.array([g for r in rows for g in r], dtype=np.int64),
        target_rank=np.zeros(q, dtype=np.int64),
        drops=np.full((q, 2), -1, dtype=np.int64),
    )


def varied_bands(n_queries=60, seed=0, max_size=50):
    """Bands of sizes 0..max_size with distinct, shuffled gallery indices."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_queries):
        m = i % (max_size + 1)
        rows.append(rng.choice(10_000, size=m, replace=False).tolist())
    return make_bands(rows)


def chi2_threshold(dof, z=3.0902):
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.09: 99.9%).

    Slightly above the exact quantile for small ``dof`` (27.9 -> 28.1 for 9 dof), so generous.
    """
    try:
        from scipy.stats import chi2  # type: ignore[import-not-found]

        return float(chi2.ppf(0.999, dof))
    except ImportError:
        h = 2.0 / (9.0 * dof)
        return dof * (1.0 - h + z * math.sqrt(h)) ** 3


def chi2_uniform(values, categories):
    """Chi-square statistic of ``values`` against the uniform law over ``categories``."""
    counts = Counter(np.asarray(values).tolist())
    assert set(counts) <= set(categories), set(counts) - set(categories)
    expected = len(values) / len(categories)
    return sum((counts.get(c, 0) - expected) ** 2 / expected for c in categories)


# --------------------------------------------------------------------------------------------
# no repeats until a band is used up


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**64 - 1])
def test_each_cycle_is_a_permutation_of_the_band(seed):
    negatives = varied_bands(n_queries=51, seed=seed % 1000)
    sampler = NegativeSampler(negatives, seed=seed)
    queries = np.arange(len(negatives))
    sizes = negatives.sizes
    max_epoch = 4 * int(sizes.max())
    draws = np.stack([sampler.sample(queries, e) for e in range(max_epoch)], axis=1)
    assert draws.dtype == np.int64
    for q in range(len(negatives)):
        m = int(sizes[q])
        band = negatives[q]
        if m == 0:
            assert (draws[q] == -1).all()
            continue
        for cycle in range(4):
            drawn = draws[q, cycle * m : (cycle + 1) * m]
            # Every band element exactly once per cycle.
            assert sorted(drawn.tolist()) == sorted(band.tolist()), (q, cycle)


def test_cycles_give_different_orders():
    # 200 queries with bands of sizes 5..50: consecutive cycles should (almost always) differ.
    rows = [list(range(100, 100 + 5 + i % 46)) for i in range(200)]
    negatives = make_bands(rows)
    sampler = NegativeSampler(negatives, seed=3)
    same = 0
    pairs = 0
    for q, band in enumerate(negatives):
        m = len(band)
        orders = [
            tuple(int(sampler.sample(q, e)) for e in range(c * m, (c + 1) * m)) for c in range(4)
        ]
        for c in range(3):
            pairs += 1
            same += orders[c] == orders[c + 1]
        assert len(set(orders)) >= 2, q
    # For m = 5 two random orders agree with probability 1/120; for larger m far less.
    assert same <= max(3, pairs // 50), (same, pairs)


def test_cycles_of_size_one_and_two():
    negatives = make_bands([[7], [3, 9]])
    sampler = NegativeSampler(negatives, seed=11)
    assert [int(sampler.sample(0, e)) for e in range(10)] == [7] * 10
    pairs = [sorted(int(sampler.sample(1, e)) for e in (2 * c, 2 * c + 1)) for c in range(10)]
    assert pairs == [[3, 9]] * 10


def test_large_epochs_and_large_band():
    band = list(range(1000, 1000 + 5000))
    sampler = NegativeSampler(make_bands([band]), seed=5)
    first = [int(sampler.sample(0, e)) for e in range(200)]
    assert len(set(first)) == 200
    assert set(first) <= set(band)
    # Far-away epochs work and are pure.
    for epoch in (10**6, 10**12 + 3, 2**63 - 1):
        assert int(sampler.sample(0, epoch)) in set(band)
        assert int(sampler.sample(0, epoch)) == int(sampler.sample(0, epoch))


# --------------------------------------------------------------------------------------------
# a pure function of (seed, query, epoch)


def all_draws(sampler, epochs):
    queries = np.arange(len(sampler))
    return np.stack([sampler.sample(queries, e) for e in range(epochs)], axis=1)


def test_independent_of_call_order_and_batching():
    negatives = varied_bands(n_queries=40, seed=7)
    epochs = 30
    reference = all_draws(NegativeSampler(negatives, seed=9), epochs)

    # Scalar calls, epochs in reverse and queries shuffled, on a fresh sampler.
    rng = np.random.default_rng(0)
    sampler = NegativeSampler(negatives, seed=9)
    pairs = [(q, e) for q in range(len(negatives)) for e in range(epochs)]
    for k in rng.permutation(len(pairs)):
        q, e = pairs[k]
        got = sampler.sample(q, e)
        assert np.ndim(got) == 0
        assert int(got) == reference[q, e]

    # Query arrays in any order, with repeats, in batches of any size.
    for e in rng.permutation(epochs):
        perm = rng.permutation(len(negatives))
        np.testing.assert_array_equal(sampler.sample(perm, int(e)), reference[perm, e])
        repeated = rng.integers(0, len(negatives), size=100)
        np.testing.assert_array_equal(sampler.sample(repeated, int(e)), reference[repeated, e])
        for chunk in np.array_split(perm, 7):
            np.testing.assert_array_equal(sampler.sample(chunk, int(e)), reference[chunk, e])
        # Other integer types of query and epoch.
        np.testing.assert_array_equal(
            sampler.sample(perm.astype(np.int32), np.int64(e)), reference[perm, e]
        )
        np.testing.assert_array_equal(sampler.sample(perm.tolist(), int(e)), reference[perm, e])
        assert int(sampler.sample(np.int64(perm[0]), int(e))) == reference[perm[0], e]


def test_independent_of_other_queries():
    # A query's draws depend on its own band only, not on the other queries' bands.
    negatives = varied_bands(n_queries=30, seed=1)
    rows = [r.tolist() for r in negatives]
    altered = [list(range(500, 500 + 7)) if i != 12 else rows[i] for i in range(len(rows))]
    a = NegativeSampler(negatives, seed=4)
    b = NegativeSampler(make_bands(altered), seed=4)
    assert [int(a.sample(12, e)) for e in range(40)] == [int(b.sample(12, e)) for e in range(40)]


def test_same_draws_in_another_process():
    seed, epochs = 77, 25
    code = (
        "import json, numpy as np\n"
        "from qure import HardNegatives\n"
        "from qure.sampling import NegativeSampler\n"
        "rng = np.random.default_rng(3)\n"
        "rows = [rng.choice(10000, size=i % 51, replace=False).tolist() for i in range(51)]\n"
        "sizes = [len(r) for r in rows]\n"
        "neg = HardNegatives(\n"
        "    indptr=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),\n"
        "    indices=np.array([g for r in rows for g in r], dtype=np.int64),\n"
        "    target_rank=np.zeros(51, dtype=np.int64),\n"
        "    drops=np.full((51, 2), -1, dtype=np.int64),\n"
        ")\n"
        f"s = NegativeSampler(neg, seed={seed})\n"
        f"out = [s.sample(np.arange(51), e).tolist() for e in range({epochs})]\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", QURE_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    theirs = np.array(json.loads(proc.stdout), dtype=np.int64).T
    ours = all_draws(NegativeSampler(varied_bands(n_queries=51, seed=3), seed=seed), epochs)
    np.testing.assert_array_equal(ours, theirs)


def test_pickle_round_trip():
    negatives = varied_bands(n_queries=25, seed=2)
    sampler = NegativeSampler(negatives, seed=42)
    clone = pickle.loads(pickle.dumps(sampler))
    assert clone.seed == 42
    assert len(clone) == len(sampler) == 25
    assert clone.negatives == negatives
    np.testing.assert_array_equal(all_draws(clone, 20), all_draws(sampler, 20))


def test_len_and_repr():
    sampler = NegativeSampler(make_bands([[1], [], [2, 3]]), seed=8)
    assert len(sampler) == 3
    assert "queries=3" in repr(sampler) and "seed=8" in repr(sampler)


# --------------------------------------------------------------------------------------------
# seeds and queries


def test_different_seeds_differ():
    negatives = make_bands([list(range(50))] * 20)
    draws = {seed: all_draws(NegativeSampler(negatives, seed=seed), 10) for seed in range(5)}
    for a in range(5):
        for b in range(a + 1, 5):
            # Equal in a few places by chance (1/50 each), never in most.
            assert (draws[a] != draws[b]).mean() > 0.8, (a, b)


def test_queries_with_identical_bands_differ():
    negatives = make_bands([list(range(50))] * 20)
    draws = all_draws(NegativeSampler(negatives, seed=0), 10)
    assert len({tuple(row) for row in draws.tolist()}) == 20


def test_seed_is_mixed_not_added_to_query():
    # (seed + 1, query) must not replay (seed, query + 1).
    negatives = make_bands([list(range(40))] * 10)
    a = all_draws(NegativeSampler(negatives, seed=100), 20)
    b = all_draws(NegativeSampler(negatives, seed=101), 20)
    assert (a[1:] != b[:-1]).mean() > 0.8


# --------------------------------------------------------------------------------------------
# uniformity


@pytest.mark.parametrize("m", [2, 3, 10, 17])
def test_first_draw_uniform_over_queries(m):
    # Many queries with the same band: the first draw is uniform over the band.
    n = 600 * m
    negatives = make_bands([list(range(200, 200 + m))] * n)
    draws = NegativeSampler(negatives, seed=1).sample(np.arange(n), 0)
    stat = chi2_uniform(draws, range(200, 200 + m))
    assert stat < chi2_threshold(m - 1), stat


@pytest.mark.parametrize("epoch", [0, 4, 9, 13, 25])
def test_draw_at_epoch_uniform_over_seeds(epoch):
    # Fixed query (with other queries around it), epoch e, 4000 seeds: uniform over its band.
    m = 10
    negatives = make_bands([[5, 6], list(range(300, 300 + m)), []])
    draws = [int(NegativeSampler(negatives, seed=s).sample(1, epoch)) for s in range(4000)]
    stat = chi2_uniform(draws, range(300, 300 + m))
    assert stat < chi2_threshold(m - 1), stat


def test_consecutive_draws_uniform_over_ordered_pairs():
    # Within a cycle, (draw at e, draw at e+1) is uniform over the m(m-1) ordered pairs.
    m = 6
    n = 200 * m * (m - 1)
    negatives = make_bands([list(range(m))] * n)
    sampler = NegativeSampler(negatives, seed=2)
    first = sampler.sample(np.arange(n), 2)
    second = sampler.sample(np.arange(n), 3)
    assert (first != second).all()
    categories = [a * m + b for a in range(m) for b in range(m) if a != b]
    stat = chi2_uniform(first * m + second, categories)
    assert stat < chi2_threshold(len(categories) - 1), stat


def test_cycles_are_independent():
    # The last draw of cycle 0 and the first of cycle 1 are independent (may repeat).
    m = 4
    n = 300 * m * m
    negatives = make_bands([list(range(m))] * n)
    sampler = NegativeSampler(negatives, seed=6)
    last = sampler.sample(np.arange(n), m - 1)
    first = sampler.sample(np.arange(n), m)
    stat = chi2_uniform(last * m + first, range(m * m))
    assert stat < chi2_threshold(m * m - 1), stat


# --------------------------------------------------------------------------------------------
# edge cases and bad input


def test_empty_bands_give_minus_one():
    negatives = make_bands([[], [4, 5], [], [9]])
    sampler = NegativeSampler(negatives, seed=0)
    for e in range(6):
        got = sampler.sample([0, 1, 2, 3], e)
        assert got[0] == -1 and got[2] == -1
        assert got[1] in (4, 5) and got[3] == 9
        assert int(sampler.sample(0, e)) == -1


def test_all_empty_and_no_queries():
    sampler = NegativeSampler(make_bands([[], [], []]), seed=0)
    np.testing.assert_array_equal(sampler.sample(np.arange(3), 5), [-1, -1, -1])
    empty = NegativeSampler(make_bands([]), seed=0)
    assert len(empty) == 0
    out = empty.sample(np.zeros(0, dtype=np.int64), 0)
    assert out.shape == (0,) and out.dtype == np.int64
    with pytest.raises(ValueError):
        empty.sample(0, 0)


def test_scalar_query_gives_scalar():
    sampler = NegativeSampler(make_bands([[1, 2, 3], [4]]), seed=0)
    got = sampler.sample(1, 0)
    assert np.ndim(got) == 0 and int(got) == 4
    assert np.ndim(sampler.sample(np.int64(0), 3)) == 0
    assert np.ndim(sampler.sample(np.array(0), 3)) == 0
    one = sampler.sample([1], 0)
    assert isinstance(one, np.ndarray) and one.shape == (1,)


def test_works_with_mined_negatives():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((30, 80)).astype(np.float32)
    targets = rng.integers(0, 80, size=30)
    negatives = qure.mine_negatives(scores, targets)
    sampler = NegativeSampler(negatives, seed=1)
    for e in range(5):
        drawn = sampler.sample(np.arange(30), e)
        for q in range(30):
            if negatives.sizes[q] == 0:
                assert drawn[q] == -1
            else:
                assert drawn[q] in set(negatives[q].tolist())
                assert drawn[q] != targets[q]


def test_bad_input():
    negatives = make_bands([[1, 2], [3]])
    sampler = NegativeSampler(negatives, seed=0)
    with pytest.raises(ValueError):
        sampler.sample(0, -1)
    with pytest.raises(TypeError):
        sampler.sample(0, 1.0)
    with pytest.raises(TypeError):
        sampler.sample(0, True)
    with pytest.raises(TypeError):
        sampler.sample(0, "1")
    with pytest.raises(ValueError):
        sampler.sample(2, 0)
    with pytest.raises(ValueError):
        sampler.sample([0, 1, 2], 0)
    with pytest.raises(ValueError):
        sampler.sample(-1, 0)
    with pytest.raises(TypeError):
        sampler.sample([0.0, 1.0], 0)
    with pytest.raises(ValueError):
        sampler.sample([[0, 1]], 0)
    with pytest.raises(ValueError):
        NegativeSampler(negatives, seed=-1)
    with pytest.raises(ValueError):
        NegativeSampler(negatives, seed=2**64)
    with pytest.raises(TypeError):
        NegativeSampler(negatives, seed=1.5)
    with pytest.raises(TypeError):
        NegativeSampler(negatives, seed=True)
    with pytest.raises(TypeError):
        NegativeSampler([[1, 2], [3]], seed=0)
    with pytest.raises(TypeError):
        NegativeSampler({"indptr": negatives.indptr, "indices": negatives.indices})
    # The largest seed is fine.
    assert int(NegativeSampler(negatives, seed=2**64 - 1).sample(1, 0)) == 3
    assert int(NegativeSampler(negatives, seed=np.uint64(2**64 - 1)).sample(1, 0)) == 3


# --------------------------------------------------------------------------------------------
# several negatives per query per epoch


@settings(deadline=None, database=None, max_examples=150)
@given(
    st.lists(st.integers(0, 9), min_size=1, max_size=6),
    st.integers(1, 6),
    st.integers(0, 40),
    st.integers(0, 2**32),
)
def test_k_draws_are_distinct_band_items_without_repeats_per_cycle(sizes, k, epoch, seed):
    bands = [np.arange(100 * q, 100 * q + m, dtype=np.int64) for q, m in enumerate(sizes)]
    negatives = HardNegatives.from_bands(bands)
    sampler = NegativeSampler(negatives, seed=seed)
    queries = np.arange(len(sizes))
    drawn = sampler.sample(queries, epoch, k=k)
    if k == 1:
        assert drawn.shape == (len(sizes),)
        drawn = drawn[:, None]
    assert drawn.shape == (len(sizes), k)
    for q, m in enumerate(sizes):
        row = drawn[q]
        got = row[row >= 0]
        assert len(got) == min(k, m)
        assert len(set(got.tolist())) == len(got)
        assert set(got.tolist()) <= set(bands[q].tolist())
        if 1 < k < m:  # the epochs sharing a permutation never repeat an item
            per_cycle = m // k
            first = epoch - epoch % per_cycle
            used = np.concatenate(
                [sampler.sample([q], e, k=k)[0] for e in range(first, first + per_cycle)]
            )
            assert len(set(used.tolist())) == per_cycle * k
    if k == 1:
        np.testing.assert_array_equal(drawn[:, 0], sampler.sample(queries, epoch))
    np.testing.assert_array_equal(
        sampler.sample(queries, epoch, k=k).reshape(len(sizes), -1), drawn
    )


def test_k_must_be_positive():
    sampler = NegativeSampler(HardNegatives.from_bands([[1, 2]]))
    with pytest.raises(ValueError, match="k must be at least 1"):
        sampler.sample([0], 0, k=0)
    with pytest.raises(TypeError, match="k must be an integer"):
        sampler.sample([0], 0, k=1.5)
