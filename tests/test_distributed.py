"""Tests of ``qure.distributed`` on 2 CPU processes (gloo): sharded mining equals one-process
mining bit for bit, and 2-rank data-parallel training reaches the parameters of one process with
the same global batch, with the log and the checkpoint written by rank 0 only.

All 2-process work runs in one launch (module fixture); the workers leave their results in files
and the tests compare them with one-process runs here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from conftest import make_cir_data, make_tiny_model  # noqa: E402

import qure  # noqa: E402
import qure.train.loop as qloop  # noqa: E402
from qure import distributed as qdist  # noqa: E402
from qure.checkpoint import load_checkpoint  # noqa: E402
from qure.mining import HardNegatives  # noqa: E402
from qure.sharded import sharded_mine  # noqa: E402
from qure.train import TrainConfig, train  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

WORLD = 2
make_model = make_tiny_model
EPOCHS = 3
METHODS = ("qure", "random", "contrastive", "topk", "percpos")
FIXTURES = Path(__file__).parent / "fixtures"


# --------------------------------------------------------------------------------------------
# shared inputs (built identically in the workers and here)


def make_data():
    """33 queries in batches of 8: the last batch has 1 item, so one rank's slice is empty."""
    return make_cir_data(n_pool=60, n_queries=33)


def train_config(method, **kwargs):
    # n_def=3 over 3 epochs: random warm-up at epoch 0, mining at epochs 1 and 2.
    base = {
        "method": method,
        "epochs": EPOCHS,
        "batch_size": 8,
        "n_def": 3,
        "seed": 3,
        "progress": False,
        "device": "cpu",
        "topk_k": 5,
    }
    base.update(kwargs)
    return TrainConfig(**base)


def mining_cases():
    """(name, queries, gallery, targets, keyword arguments, query split) per case; the query
    split gives rank 0's number of queries (None: ``shard``)."""
    rng = np.random.default_rng(11)
    cases = []

    def unit(*shape):
        x = rng.standard_normal(shape).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    q, g = unit(37, 8), unit(53, 3, 8)
    t = rng.integers(0, 53, size=37)
    cases.append(("tokens", q, g, t, {}, None))
    cases.append(("anchored", q, g, t, {"pairing": "anchored", "consecutive_threshold": 2}, 5))
    ids = rng.integers(0, 20, size=53)  # duplicates in the gallery
    positives = [list(rng.choice(53, size=int(rng.integers(0, 4)), replace=False)) for _ in t]
    both = {"gallery_ids": ids, "positives": positives}
    cases.append(("ids_positives", q, g, t, both, 30))
    # Coarse features: many exactly tied scores (ties go by gallery index).
    qc = np.round(rng.standard_normal((21, 6)) * 2).astype(np.float32)
    gc = np.round(rng.standard_normal((40, 6)) * 2).astype(np.float32)
    tc = rng.integers(0, 40, size=21)
    cases.append(("ties_2d", qc, gc, tc, {}, None))
    cases.append(("one_query", q[:1], g, t[:1], {}, None))  # rank 0 holds no query
    # max_rank: per-shard top-M candidates merged (the default on several ranks) and gathering.
    cases.append(("max_rank", q, g, t, {"max_rank": 9}, None))
    cases.append(("max_rank_gather", q, g, t, {"max_rank": 9, "strategy": "gather"}, None))
    cases.append(("max_rank_ids", q, g, t, {"max_rank": 12, **both}, 20))
    cases.append(("max_rank_positives", q, g, t, {"max_rank": 6, "positives": positives}, 3))
    cases.append(("max_rank_ties", qc, gc, tc, {"max_rank": 7, "block_size": 4}, None))
    cases.append(("max_rank_long", q, g, t, {"max_rank": 500}, None))  # longer than any tail
    # Other miners: a filtered window after the target from merged candidates, and SimANS top-k
    # after gathering.
    window = {"miner": "window", "rank_range": (1, 12), "relative_margin": 0.1, "num_negatives": 3}
    cases.append(("window_filters", q, g, t, {"max_rank": 15, **window, **both}, 20))
    simans = {"miner": "topk", "num_negatives": 5, "sampling": "simans", "simans": (3.0, 0.0)}
    cases.append(("topk_simans", q, g, t, {"strategy": "gather", "seed": 2, **simans}, None))
    # Half-precision galleries: the shards' bits are gathered or scored in place, as one
    # process scores them (no float32 copy), so the bands are those of the half gallery.
    g16 = g.astype(np.float16)
    gbf = torch.from_numpy(g).to(torch.bfloat16)
    cases.append(("float16", q, g16, t, {}, None))
    cases.append(("float16_max_rank", q, g16, t, {"max_rank": 9}, None))
    cases.append(("bfloat16", q, gbf, t, {}, 30))
    cases.append(("bfloat16_max_rank", q, gbf, t, {"max_rank": 9}, None))
    return cases


# --------------------------------------------------------------------------------------------
# the 2-process workers


def _mining_worker(out: Path):
    r, w = qdist.rank(), qdist.world_size()
    for name, q, g, t, kwargs, split in mining_cases():
        rows = qdist.shard(len(q)) if split is None else (range(0, split), range(split, len(q)))[r]
        cols = qdist.shard(len(g))
        kw = dict(kwargs)
        if "positives" in kw:
            kw["positives"] = [kw["positives"][i] for i in rows]
        mined = sharded_mine(
            q[rows.start : rows.stop], g[cols.start : cols.stop], t[rows.start : rows.stop], **kw
        )
        mined.save(out / f"mine_{name}_rank{r}.npz")
    # all_gather_array: uneven first dims, any dtype, an empty share.
    n = 3 if r == 0 else 0
    gathered = {
        str(dt): qdist.all_gather_array((np.arange(n * 2) % 5).astype(dt).reshape(n, 2))
        for dt in (np.int64, np.float32, np.uint16, np.bool_)
    }
    np.savez(out / f"gather_rank{r}.npz", **gathered)
    errors = {}
    try:  # trailing shapes that disagree: every rank raises
        qdist.all_gather_array(np.zeros((2, 3 + r)))
    except ValueError as exc:
        errors["shape"] = str(exc)
    q, g = np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32)
    bad = np.array([0, 1]) if r == 0 else np.array([2, 99])
    for name, kwargs in (("target", {}), ("target_max_rank", {"max_rank": 2})):
        try:  # one rank's bad target: every rank raises instead of waiting
            sharded_mine(q[2 * r : 2 * r + 2], g[2 * r : 2 * r + 2], bad, **kwargs)
        except ValueError as exc:
            errors[name] = str(exc)
    try:  # float16 on one rank, float32 on the other: every rank raises
        sharded_mine(
            q[2 * r : 2 * r + 2], g[2 * r : 2 * r + 2].astype((np.float16, np.float32)[r]), [0, 1]
        )
    except ValueError as exc:
        errors["format"] = str(exc)
    (out / f"errors_rank{r}.json").write_text(json.dumps(errors))
    assert w == WORLD


class _Stop(Exception):
    pass


def _train_worker(out: Path):
    r = qdist.rank()
    torch.set_num_threads(1)
    saves = []
    original = qloop.save_checkpoint

    def counting_save(state, path):
        saves.append(int(state["epoch"]))
        original(state, path)

    qloop.save_checkpoint = counting_save
    data = make_data()
    for method in METHODS:
        model = make_model()
        cfg = train_config(
            method,
            checkpoint_dir=str(out / f"ckpt_{method}"),
            log_path=str(out / f"{method}.jsonl"),
        )
        result = train(model, data, cfg)
        torch.save(model.state_dict(), out / f"{method}_rank{r}.pt")
        (out / f"{method}_history_rank{r}.json").write_text(json.dumps(result.history))
        if result.negatives is not None:
            result.negatives.save(out / f"{method}_negatives_rank{r}.npz")

    # Interrupted after epoch 1 (on every rank), then resumed into a fresh model.
    def stop(model, epoch):
        if epoch == 2:
            raise _Stop
        return {}

    cfg = train_config("qure", checkpoint_dir=str(out / "ckpt_resume"))
    try:
        train(make_model(), data, cfg, evaluate=stop)
    except _Stop:
        pass
    cfg.resume = True
    model = make_model(seed=5)
    train(model, data, cfg)
    torch.save(model.state_dict(), out / f"resumed_rank{r}.pt")
    (out / f"saves_rank{r}.json").write_text(json.dumps(saves))


def _worker(out: str):
    out = Path(out)
    _mining_worker(out)
    _train_worker(out)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    qdist.launch(_worker, WORLD, (str(out),))
    return out


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# sharded mining


@pytest.mark.parametrize("case", [c[0] for c in mining_cases()])
def test_sharded_mining_equals_one_process(launched, case):
    _, q, g, t, kwargs, _ = next(c for c in mining_cases() if c[0] == case)
    kwargs = {("strategy" if k == "miner" else k): v for k, v in kwargs.items() if k != "strategy"}
    expected = qure.mine_from_features(q, g, t, **kwargs)
    assert expected.indices.size > 0 or case == "one_query"
    for r in range(WORLD):
        got = HardNegatives.load(launched / f"mine_{case}_rank{r}.npz")
        for field in ("indptr", "indices", "target_rank", "drops", "tail_length", "scores"):
            np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), field)
        np.testing.assert_array_equal(got.target_score, expected.target_score)
        assert got.removed == expected.removed
        assert got == expected


def test_all_gather_array(launched):
    for r in range(WORLD):
        with np.load(launched / f"gather_rank{r}.npz") as got:
            for dt in (np.int64, np.float32, np.uint16, np.bool_):
                expected = (np.arange(6) % 5).astype(dt).reshape(3, 2)  # rank 1 sent no rows
                array = got[str(dt)]
                assert array.dtype == np.dtype(dt)
                np.testing.assert_array_equal(array, expected)


def test_errors_reach_every_rank(launched):
    for r in range(WORLD):
        errors = json.loads((launched / f"errors_rank{r}.json").read_text())
        assert "disagree" in errors["shape"]
        # Rank 1's own error; rank 0 is told that another rank failed.
        assert "target" in errors and "target_max_rank" in errors
        assert "disagree on their dtype" in errors["format"]
        assert "['float16', 'float32']" in errors["format"]
    rank0 = json.loads((launched / "errors_rank0.json").read_text())
    assert "another rank" in rank0["target"] and "another rank" in rank0["target_max_rank"]


# --------------------------------------------------------------------------------------------
# data-parallel training


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One-process runs of every method with the same global batch."""
    out = tmp_path_factory.mktemp("single")
    data = make_data()
    runs = {}
    for method in METHODS:
        model = make_model()
        cfg = train_config(method, checkpoint_dir=str(out / method))
        runs[method] = (model, train(model, data, cfg))
    return runs


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_match_one_process(launched, single, method):
    model, result = single[method]
    rank0 = _state(launched / f"{method}_rank0.pt")
    rank1 = _state(launched / f"{method}_rank1.pt")
    start = make_model().state_dict()
    for name, value in model.state_dict().items():
        # Every rank ends with the same parameters, bit for bit (DDP averages the gradients)...
        assert torch.equal(rank0[name], rank1[name]), name
        # ... and they are those of one process with the same global batch, up to rounding.
        torch.testing.assert_close(rank0[name], value, atol=1e-5, rtol=1e-4, msg=name)
    assert any(not torch.equal(rank0[k], start[k]) for k in start), "the model trained"
    history = json.loads((launched / f"{method}_history_rank0.json").read_text())
    assert history[-1]["seed"] == 3 and len(history) == EPOCHS
    for mine, one in zip(history, result.history):
        assert mine["loss"] == pytest.approx(one["loss"], rel=1e-5)
        for key in ("fallbacks", "mined", "band_mean", "band_empty"):
            assert mine.get(key) == one.get(key), key
    if method in ("qure", "topk"):
        # The sharded re-mining inside training found the one-process bands.
        for r in range(WORLD):
            got = HardNegatives.load(launched / f"{method}_negatives_rank{r}.npz")
            assert got == result.negatives


def test_rank0_writes_log_and_checkpoint_once(launched):
    for method in METHODS:
        lines = (launched / f"{method}.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == list(range(EPOCHS))
        ckpt = launched / f"ckpt_{method}"
        assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt"]
        state = load_checkpoint(ckpt / "last.pt")
        assert state["epoch"] == EPOCHS - 1 and len(state["history"]) == EPOCHS
        saved = _state(launched / f"{method}_rank0.pt")
        for name, value in state["model"].items():
            assert torch.equal(value, saved[name]), name
    # Rank 0 saved once per epoch (4 methods, then 2 + 1 epochs of the resumed run), rank 1 never.
    saves0 = json.loads((launched / "saves_rank0.json").read_text())
    assert saves0 == [0, 1, 2] * len(METHODS) + [0, 1, 2]
    assert json.loads((launched / "saves_rank1.json").read_text()) == []


def test_resume_under_ddp_is_exact(launched):
    resumed = _state(launched / "resumed_rank1.pt")
    straight = _state(launched / "qure_rank1.pt")
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
    assert all(torch.equal(v, _state(launched / "resumed_rank0.pt")[k]) for k, v in resumed.items())


# --------------------------------------------------------------------------------------------
# one process: helpers degrade to their one-rank meaning


def test_shard_tiles_the_range():
    for n in (0, 1, 5, 33, 100):
        for world in (1, 2, 3, 8):
            parts = [qdist.shard(n, r, world) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert qdist.shard(7) == range(7)  # rank 0 of 1 outside a process group
    with pytest.raises(ValueError):
        qdist.shard(5, 2, 2)
    with pytest.raises(ValueError):
        qdist.shard(-1, 0, 1)


def test_helpers_outside_a_process_group(monkeypatch):
    assert not qdist.is_distributed()
    assert (qdist.rank(), qdist.world_size()) == (0, 1)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert qdist.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert qdist.init_from_env() is False
    assert not dist.is_initialized()
    a = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(qdist.all_gather_array(a), a)
    _, q, g, t, kwargs, _ = mining_cases()[0]
    mined = sharded_mine(q, g, t)
    assert qdist.gather_hard_negatives(mined) is mined
    assert mined == qure.mine_from_features(q, g, t)
    # The candidate merge also runs in one process (one shard), with the same result.
    for strategy in ("candidates", "gather", "auto"):
        assert sharded_mine(q, g, t, max_rank=5, strategy=strategy) == (
            qure.mine_from_features(q, g, t, max_rank=5)
        )
    # Half-precision galleries are mined from their bits, as in mine_from_features, and never
    # copied to float32 (NumPy's allocations are traced: a float32 copy would double the peak).
    rng = np.random.default_rng(5)
    big = rng.standard_normal((4096, 2, 64)).astype(np.float16)
    qb, tb = rng.standard_normal((3, 64)).astype(np.float32), np.array([0, 5, 4095])
    for gallery in (big, torch.from_numpy(big.astype(np.float32)).to(torch.bfloat16)):
        for kw in ({}, {"max_rank": 50}):
            tracemalloc.start()
            got = sharded_mine(qb, gallery, tb, **kw)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert got == qure.mine_from_features(qb, gallery, tb, **kw)
            assert peak < big.nbytes, (kw, peak, big.nbytes)
    with pytest.raises(ValueError, match="needs max_rank"):
        sharded_mine(q, g, t, strategy="candidates")
    with pytest.raises(ValueError, match="strategy"):
        sharded_mine(q, g, t, strategy="scatter")
    with pytest.raises(ValueError):
        qdist.all_gather_array(np.float32(1.0))


# --------------------------------------------------------------------------------------------
# ``qure train`` under torchrun


@pytest.mark.skipif(
    not (FIXTURES / "configs" / "fashioniq.json").is_file(), reason="needs the fixtures"
)
def test_qure_train_under_torchrun(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("PIL")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "QURE_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={qdist.free_port()}",
        "-m", "qure", "train", "--config", str(FIXTURES / "configs" / "fashioniq.json"),
        "--output", str(tmp_path), "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("training blip2 with qure") == 1  # rank 0 speaks
    assert "on 2 ranks" in done.stdout
    log = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert any(r.get("mined") for r in log)
    assert all(math.isfinite(r["loss"]) for r in log)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "last.pt", "train.jsonl"]
