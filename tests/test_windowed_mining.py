"""Tests of the rank window (``max_rank``) in training, known positives, band-location
diagnostics, and the negatives the trainer records."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import qure
from qure.mining import BOTTOM_FRACTION, SPAN_FRACTION, HardNegatives, tail_lengths

torch = pytest.importorskip("torch")

from conftest import make_cir_data, make_tiny_model  # noqa: E402

from qure.train import TrainConfig, train  # noqa: E402

make_model = make_tiny_model


def make_data(positives=None):
    return make_cir_data(n_pool=60, n_queries=30, positives=positives)


def config(**kwargs):
    base = {"epochs": 4, "batch_size": 8, "progress": False, "device": "cpu", "n_def": 4}
    base.update(kwargs)
    return TrainConfig(**base)


# --------------------------------------------------------------------------------------------
# diagnostics


def reference_diagnostics(drops, tails, sizes):
    """Plain-Python band location statistics."""
    starts, ends, bottom, span = [], [], [], []
    for (a, b), t in zip(drops, tails):
        if a < 0:
            continue
        starts.append((a + 1) / t)
        ends.append(b / t)
        bottom.append((a + 1) / t >= 1 - BOTTOM_FRACTION)
        span.append((b - a) / t > SPAN_FRACTION)
    return {
        "start_q50": float(np.quantile(starts, 0.5)),
        "end_q50": float(np.quantile(ends, 0.5)),
        "at_bottom": float(np.mean(bottom)),
        "spanning": float(np.mean(span)),
        "degenerate": float(np.mean(np.array(bottom) | np.array(span))),
        "band_mean": float(np.mean(sizes)),
    }


@pytest.mark.parametrize("max_rank", [None, 5, 40])
def test_diagnostics_match_a_plain_reference(max_rank):
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((50, 120)).astype(np.float32)
    targets = rng.integers(0, 120, 50)
    mined = qure.mine_negatives(scores, targets, max_rank=max_rank)
    ranks = (scores > scores[np.arange(50), targets][:, None]).sum(1)
    expected_tails = 119 - ranks if max_rank is None else np.minimum(119 - ranks, max_rank)
    np.testing.assert_array_equal(mined.tail_length, expected_tails)
    d = mined.diagnostics()
    ref = reference_diagnostics(mined.drops, mined.tail_length, mined.sizes)
    for key, value in ref.items():
        assert d[key] == pytest.approx(value), key
    assert d["queries"] == 50
    assert d["with_band"] == pytest.approx(np.mean(mined.sizes > 0))
    assert d["start_q10"] <= d["start_q50"] <= d["start_q90"]


def test_mine_from_features_carries_tail_lengths():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((20, 8)), rng.standard_normal((70, 8))
    targets = rng.integers(0, 70, 20)
    a = qure.mine_from_features(q, g, targets, max_rank=30)
    b = qure.mine_negatives(qure.score(q, g), targets, max_rank=30)
    assert a == b
    np.testing.assert_array_equal(a.tail_length, b.tail_length)


def test_bottom_bands_are_flagged_and_a_window_fixes_them():
    # A smooth curve with its two largest gaps at the very end: the whole-tail rule picks the
    # last few items; a window keeps the band next to the target.
    n = 400
    row = np.linspace(1.0, 0.0, n).astype(np.float32)
    row[-9:] -= np.float32(0.3)  # two steep drops, 6 items apart, near the end
    row[-3:] -= np.float32(0.4)
    scores = np.tile(row, (10, 1))
    targets = np.zeros(10, dtype=np.int64)
    whole = qure.mine_negatives(scores, targets)
    d = whole.diagnostics()
    assert d["at_bottom"] == 1.0 and d["degenerate"] == 1.0
    message = whole.degenerate_warning()
    assert message is not None and "max_rank" in message
    windowed = qure.mine_negatives(scores, targets, max_rank=50)
    assert windowed.diagnostics()["at_bottom"] == 0.0
    assert windowed.degenerate_warning() is None


def test_diagnostics_without_tail_lengths_and_empty():
    bare = HardNegatives(
        indptr=np.array([0, 1]),
        indices=np.array([3]),
        target_rank=np.array([0]),
        drops=np.array([[0, 1]]),
    )
    with pytest.raises(ValueError, match="tail_length"):
        bare.diagnostics()
    assert bare.degenerate_warning() is None
    empty = qure.mine_negatives(np.zeros((2, 2), np.float32), [0, 1])
    d = empty.diagnostics()
    assert d["with_band"] == 0.0 and math.isnan(d["start_q50"]) and math.isnan(d["degenerate"])
    assert empty.degenerate_warning() is None
    with pytest.raises(ValueError, match="tail_length"):
        HardNegatives(
            indptr=np.array([0, 0]),
            indices=np.zeros(0, np.int64),
            target_rank=np.array([0]),
            drops=np.array([[-1, -1]]),
            tail_length=np.array([1, 2]),
        )


def test_tail_lengths_survive_save_and_load(tmp_path):
    mined = qure.mine_negatives(np.random.default_rng(0).random((5, 30), np.float32), [0] * 5)
    mined.save(tmp_path / "bands.npz")
    loaded = HardNegatives.load(tmp_path / "bands.npz")
    assert loaded == mined
    np.testing.assert_array_equal(loaded.tail_length, mined.tail_length)
    old = tmp_path / "old.npz"  # written by an older qure: no tail lengths
    np.savez(
        old,
        indptr=mined.indptr,
        indices=mined.indices,
        target_rank=mined.target_rank,
        drops=mined.drops,
    )
    assert HardNegatives.load(old).tail_length is None


def test_tail_lengths_helper():
    np.testing.assert_array_equal(tail_lengths(np.array([0, 5, 9]), 10, None), [9, 4, 0])
    np.testing.assert_array_equal(tail_lengths(np.array([0, 5, 9]), 10, 3), [3, 3, 0])


# --------------------------------------------------------------------------------------------
# training with a window, known positives, recorded negatives


def test_trainer_passes_the_window_to_the_miner(monkeypatch):
    import qure.train.negatives as qtrain

    seen = []
    real = qtrain.mine_from_features

    def spy(*args, **kwargs):
        seen.append(kwargs.get("max_rank"))
        return real(*args, **kwargs)

    monkeypatch.setattr(qtrain, "mine_from_features", spy)
    train(make_model(), make_data(), config(method="qure", max_rank=7))
    assert seen and set(seen) == {7}


def test_trainer_logs_band_location_at_every_remining(tmp_path):
    log = tmp_path / "log.jsonl"
    result = train(make_model(), make_data(), config(method="qure", log_path=str(log)))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    mined = [r for r in records if r.get("mined")]
    assert [r["epoch"] for r in mined] == [1, 2, 3]
    for r in mined:
        for key in ("start_q50", "end_q50", "at_bottom", "spanning", "degenerate", "band_mean"):
            assert key in r["mining"]
    assert all("mining" not in r for r in records if not r.get("mined"))
    assert result.negatives.tail_length is not None


def test_trainer_warns_when_bands_are_degenerate(monkeypatch):
    import qure.train.negatives as qtrain

    def bottom_bands(*args, **kwargs):
        q = len(args[2])
        return HardNegatives(
            indptr=np.arange(0, 2 * q + 1, 2, dtype=np.int64),
            indices=np.tile(np.array([50, 51]), q).astype(np.int64),
            target_rank=np.zeros(q, np.int64),
            drops=np.tile(np.array([190, 198]), (q, 1)).astype(np.int64),
            tail_length=np.full(q, 200, np.int64),
        )

    monkeypatch.setattr(qtrain, "mine_from_features", bottom_bands)
    with pytest.warns(RuntimeWarning, match="max_rank"):
        train(make_model(), make_data(), config(method="qure"))


@pytest.mark.parametrize("method", ["qure", "topk", "random"])
def test_known_positives_are_never_drawn(method):
    base = make_data()
    # Every query's 20 nearest-index items are known positives: none may be used as negatives.
    positives = [np.setdiff1d((t + np.arange(1, 21)) % 60, [t]) for t in base.target]
    data = make_data(positives=positives)
    result = train(make_model(), data, config(method=method, topk_k=5))
    assert len(result.drawn) == 4 and len(result.orders) == 4
    for drawn in result.drawn:
        for q, neg in enumerate(drawn):
            assert neg != data.target[q]
            assert neg not in set(positives[q].tolist())
    if method != "random":
        for q in range(len(data)):
            assert not np.isin(result.negatives[q], positives[q]).any()


def test_orders_are_the_epoch_permutations():
    data = make_data()
    result = train(make_model(), data, config(method="contrastive"))
    assert result.drawn == []
    for epoch, order in enumerate(result.orders):
        np.testing.assert_array_equal(
            order, np.random.default_rng([0, epoch]).permutation(len(data))
        )


@pytest.mark.parametrize(
    "kwargs", [{"max_rank": 0}, {"max_rank": -3}, {"max_rank": 2.5}, {"max_rank": True}]
)
def test_bad_window(kwargs):
    with pytest.raises(ValueError, match="max_rank"):
        train(make_model(), make_data(), config(**kwargs))


def test_bad_positives():
    with pytest.raises(ValueError, match="positives"):
        make_data(positives=[[1]] * 3)
    with pytest.raises(ValueError, match="positives"):
        make_data(positives=[[999]] * 30)
    with pytest.raises(ValueError, match="no negative"):
        make_data(positives=[np.arange(60)] * 30)


def test_window_changes_bands_but_not_baselines():
    data = make_data()
    a = train(make_model(), data, config(method="topk", max_rank=3))
    b = train(make_model(), data, config(method="topk"))
    assert a.negatives == b.negatives  # max_rank is QuRe's alone


def test_no_warning_for_healthy_bands(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        bands = qure.mine_negatives(
            np.tile(np.array([1.0, 0.9, 0.5, 0.45, 0.4, 0.1] + [0.0] * 4, np.float32), (3, 1)),
            [0, 0, 0],
        )
        assert bands.degenerate_warning() is None


def test_short_tails_do_not_warn():
    # Bands spanning a 20-item tail: degenerate by the numbers, but too short to matter.
    middle = np.linspace(0.5, 0.4, 18)
    row = np.concatenate([[2.0, 1.0], middle, [-1.0]]).astype(np.float32)
    bands = qure.mine_negatives(np.tile(row, (4, 1)), [0] * 4)
    assert bands.diagnostics()["degenerate"] == 1.0
    assert bands.degenerate_warning() is None
