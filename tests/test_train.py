"""Tests of ``qure.train``: every method, the mining schedule, fallbacks, exact resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import assert_same_state, make_cir_data, make_tiny_model  # noqa: E402

import qure.train.loop as qloop  # noqa: E402
from qure.checkpoint import load_checkpoint  # noqa: E402
from qure.sampling import NegativeSampler  # noqa: E402
from qure.train import (  # noqa: E402
    METHODS,
    CIRTrainData,
    TrainConfig,
    TrainResult,
    encode_split,
    train,
)

make_data = make_cir_data
make_model = make_tiny_model


# --------------------------------------------------------------------------------------------
# helpers


def config(**kwargs):
    base = {"epochs": 4, "batch_size": 8, "progress": False, "device": "cpu", "n_def": 3}
    base.update(kwargs)
    return TrainConfig(**base)


def without_seconds(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def assert_same_nested(a, b, path="state"):
    """Bit-identical nested checkpoint contents (dicts, lists, tensors, arrays, scalars)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            if key == "seconds":
                continue
            assert_same_nested(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_nested(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b, path


class Interrupted(Exception):
    """Stands in for a crash or a KeyboardInterrupt between two epochs."""


def param_probe(model, epoch):
    """An ``evaluate`` callback whose value depends on every parameter."""
    with torch.no_grad():
        return {"probe": float(sum(p.double().sum() for p in model.parameters()))}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The model is tiny: one thread is fastest and immune to other load on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return make_data()


# --------------------------------------------------------------------------------------------
# every method


@pytest.fixture(scope="module")
def runs(data):
    """One 6-epoch run per method (n_def=3: period 2, mining at epochs 2 and 4)."""
    out = {}
    for method in METHODS:
        model = make_model()
        result = train(model, data, config(method=method, epochs=6, n_def=3))
        out[method] = (model, result)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs(runs, method):
    model, result = runs[method]
    assert isinstance(result, TrainResult)
    assert len(result.history) == 6
    for epoch, record in enumerate(result.history):
        assert record["method"] == method
        assert record["epoch"] == epoch
        assert record["seed"] == 0
        assert math.isfinite(record["loss"]) and record["loss"] > 0
        assert record["lr"] > 0 and record["seconds"] >= 0
    # Cosine decay: the learning rate never rises.
    lrs = [r["lr"] for r in result.history]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(1e-3)
    for p in model.parameters():
        assert torch.isfinite(p).all()


def test_methods_train_the_model(runs):
    start = make_model()
    for method in METHODS:
        model, _ = runs[method]
        changed = any(not torch.equal(a, b) for a, b in zip(model.parameters(), start.parameters()))
        assert changed, method


@pytest.mark.parametrize("method", ["qure", "topk"])
def test_mining_schedule(runs, data, method):
    _, result = runs[method]
    history = result.history
    for record in history[:2]:  # random warm-up
        assert "mined" not in record
        assert record["fallbacks"] == 0
    assert [r["mined"] for r in history[2:]] == [True, False, True, False]
    for record in history[2:]:
        for key in ("band_mean", "band_std", "band_empty", "fallbacks"):
            assert key in record
        assert record["band_mean"] >= 0 and record["band_std"] >= 0
        assert 0 <= record["band_empty"] <= len(data)
        # Every empty band falls back to a random negative, and only those.
        assert record["fallbacks"] == record["band_empty"]
    negatives = result.negatives
    assert negatives is not None and len(negatives) == len(data)
    assert history[-1]["band_mean"] == pytest.approx(float(negatives.sizes.mean()))
    assert history[-1]["band_empty"] == int(negatives.empty.sum())
    for q in range(len(data)):
        assert data.target[q] not in negatives[q]
    if method == "topk":
        assert (negatives.sizes == 10).all()
        assert history[-1]["band_std"] == 0


@pytest.mark.parametrize("method", ["random", "contrastive"])
def test_baselines_never_mine(runs, method):
    _, result = runs[method]
    assert result.negatives is None
    for record in result.history:
        for key in ("mined", "band_mean", "band_std", "band_empty"):
            assert key not in record
    if method == "random":
        assert all(r["fallbacks"] == 0 for r in result.history)
    else:
        assert all("fallbacks" not in r for r in result.history)


def test_mining_period():
    assert TrainConfig(epochs=30, n_def=6).mining_period == 5
    assert TrainConfig(epochs=6, n_def=3).mining_period == 2
    assert TrainConfig(epochs=3, n_def=6).mining_period == 1
    assert TrainConfig(epochs=12).mining_period == 2


@pytest.mark.parametrize("method", ["qure", "topk", "random"])
def test_negatives_used_are_the_samplers_draws(data, monkeypatch, method):
    """Intercepts the images each batch loads: negatives come from the bands (or fall back)."""
    calls = []
    original = qloop.load_images

    def spy(images, idx, device):
        calls.append(np.array(idx))
        return original(images, idx, device)

    monkeypatch.setattr(qloop, "load_images", spy)
    per_epoch = []

    def close_epoch(model, epoch):
        per_epoch.append(list(calls))
        calls.clear()
        return {}

    cfg = config(method=method, epochs=6, n_def=3, seed=5)
    result = train(make_model(), data, cfg, evaluate=close_epoch)
    query_of_target = {int(t): q for q, t in enumerate(data.target)}
    used = np.full((6, len(data)), -2, dtype=np.int64)
    for epoch, epoch_calls in enumerate(per_epoch):
        assert len(epoch_calls) == 3 * math.ceil(len(data) / 8)
        for _ref, targets, negs in zip(*[iter(epoch_calls)] * 3):
            queries = [query_of_target[int(t)] for t in targets]
            used[epoch, queries] = negs
    assert (used >= 0).all(), "every query is seen once per epoch"
    assert (used != data.target[None, :]).all(), "a negative is never the target"
    assert (used < len(data.images)).all()
    if method == "random":
        return
    # Epochs 4 and 5 use the bands mined at epoch 4 (the returned ones).
    negatives = result.negatives
    sampler = NegativeSampler(negatives, seed=5)
    for epoch in (4, 5):
        drawn = sampler.sample(np.arange(len(data)), epoch)
        full = ~negatives.empty
        np.testing.assert_array_equal(used[epoch, full], drawn[full])


# --------------------------------------------------------------------------------------------
# fallbacks


def test_fallbacks_when_bands_are_empty():
    # A pool of 3 images leaves at most 2 items after the target: never two separated drops.
    small = make_data(n_pool=3, n_queries=6, unique_targets=False)
    result = train(make_model(), small, config(method="qure", epochs=6, n_def=3))
    assert len(result.history) == 6
    assert result.negatives is not None and result.negatives.empty.all()
    for record in result.history[2:]:
        assert record["fallbacks"] == 6
        assert record["band_empty"] == 6
        assert record["band_mean"] == 0
        assert math.isfinite(record["loss"])
    # top-k still finds the 2 other images.
    result = train(make_model(), small, config(method="topk", epochs=6, n_def=3))
    assert (result.negatives.sizes == 2).all()
    assert all(r["fallbacks"] == 0 for r in result.history)


@pytest.mark.parametrize("method", METHODS)
def test_two_image_pool(method):
    tiny = make_data(n_pool=2, n_queries=4, unique_targets=False)
    result = train(make_model(), tiny, config(method=method, epochs=2, n_def=1))
    assert len(result.history) == 2
    assert all(math.isfinite(r["loss"]) for r in result.history)


# --------------------------------------------------------------------------------------------
# determinism


@pytest.mark.parametrize("method", ["qure", "contrastive"])
def test_same_seed_same_parameters(data, method):
    a, b = make_model(), make_model()
    ha = train(a, data, config(method=method, epochs=4, n_def=2, seed=3)).history
    hb = train(b, data, config(method=method, epochs=4, n_def=2, seed=3)).history
    assert_same_state(a, b)
    assert without_seconds(ha) == without_seconds(hb)
    c = make_model()
    train(c, data, config(method=method, epochs=4, n_def=2, seed=4))
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


# --------------------------------------------------------------------------------------------
# checkpoints, logs and resume


def test_checkpoint_and_log_files(data, tmp_path):
    log = tmp_path / "log" / "train.jsonl"
    log.parent.mkdir()
    ckpt = tmp_path / "ckpt"
    cfg = config(method="qure", epochs=4, n_def=2, checkpoint_dir=str(ckpt), log_path=str(log))
    result = train(make_model(), data, cfg)
    assert (ckpt / "last.pt").is_file()
    assert not [p.name for p in ckpt.iterdir() if p.suffix == ".tmp"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt"]
    lines = log.read_text().splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]
    assert records == result.history
    state = load_checkpoint(ckpt / "last.pt")
    assert state["epoch"] == 3
    assert state["config"]["method"] == "qure"
    assert len(state["history"]) == 4
    assert state["negatives"] is not None
    np.testing.assert_array_equal(state["negatives"]["indptr"], result.negatives.indptr)


@pytest.mark.parametrize(
    ("method", "stop_after"),
    [("qure", 2), ("qure", 0), ("qure", 1), ("topk", 2), ("contrastive", 1), ("random", 2)],
)
def test_resume_reproduces_an_uninterrupted_run(data, tmp_path, method, stop_after):
    """Run A: 4 epochs straight. Run B: interrupted after epoch ``stop_after`` was checkpointed,
    then resumed in a fresh model. With n_def=2 the bands are mined at epoch 2, so stopping
    after epoch 2 makes epoch 3 use the restored bands."""
    epochs = 4
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    log_a, log_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"

    model_a = make_model(seed=0)
    cfg_a = config(
        method=method,
        epochs=epochs,
        n_def=2,
        seed=7,
        checkpoint_dir=str(dir_a),
        log_path=str(log_a),
    )
    result_a = train(model_a, data, cfg_a, evaluate=param_probe)

    def interrupt(model, epoch):
        if epoch == stop_after + 1:  # this epoch trained but is not checkpointed
            raise Interrupted
        return param_probe(model, epoch)

    cfg_b = config(
        method=method,
        epochs=epochs,
        n_def=2,
        seed=7,
        checkpoint_dir=str(dir_b),
        log_path=str(log_b),
    )
    with pytest.raises(Interrupted):
        train(make_model(seed=0), data, cfg_b, evaluate=interrupt)
    state = load_checkpoint(dir_b / "last.pt")
    assert state["epoch"] == stop_after
    assert not list(dir_b.glob("*.tmp"))

    # A fresh instance with a different initialisation: everything comes from the checkpoint.
    model_b = make_model(seed=123)
    cfg_b.resume = True
    result_b = train(model_b, data, cfg_b, evaluate=param_probe)

    assert_same_state(model_a, model_b)
    assert len(result_b.history) == epochs
    assert without_seconds(result_a.history) == without_seconds(result_b.history)
    if method in ("qure", "topk"):
        assert result_a.negatives == result_b.negatives
        if stop_after == 2:  # epoch 3 ran on the bands restored from the checkpoint
            assert result_b.history[3]["mined"] is False
    else:
        assert result_a.negatives is None and result_b.negatives is None
    # The checkpoints agree too (model, optimizer, scheduler, negatives, history).
    state_a = load_checkpoint(dir_a / "last.pt")
    state_b = load_checkpoint(dir_b / "last.pt")
    for key in ("checkpoint_dir", "log_path", "resume"):
        del state_a["config"][key], state_b["config"][key]
    assert_same_nested(state_a, state_b)
    # One JSON line per epoch in both logs (the interrupted epoch was never logged).
    lines_a = [json.loads(x) for x in log_a.read_text().splitlines()]
    lines_b = [json.loads(x) for x in log_b.read_text().splitlines()]
    assert [r["epoch"] for r in lines_a] == [r["epoch"] for r in lines_b] == list(range(epochs))
    assert without_seconds(lines_a) == without_seconds(lines_b)


def test_resume_of_a_finished_run(data, tmp_path):
    cfg = config(method="qure", epochs=4, n_def=2, checkpoint_dir=str(tmp_path))
    model_a = make_model()
    result_a = train(model_a, data, cfg)
    cfg.resume = True
    model_b = make_model(seed=9)
    result_b = train(model_b, data, cfg)
    assert_same_state(model_a, model_b)
    assert without_seconds(result_b.history) == without_seconds(result_a.history)
    assert result_b.negatives == result_a.negatives


def test_resume_without_a_checkpoint_starts_fresh(data, tmp_path):
    model_a = make_model()
    train(model_a, data, config(method="random", epochs=2))
    model_b = make_model()
    cfg = config(method="random", epochs=2, checkpoint_dir=str(tmp_path / "new"), resume=True)
    result = train(model_b, data, cfg)
    assert len(result.history) == 2
    assert_same_state(model_a, model_b)
    assert (tmp_path / "new" / "last.pt").is_file()


# --------------------------------------------------------------------------------------------
# encode_split


def test_encode_split(data):
    model = make_model()
    model.train()
    queries, tokens = encode_split(model, data.images, data.reference, data.text, batch=7)
    assert model.training, "the training mode is restored"
    assert queries.shape == (len(data), 16) and queries.dtype == np.float32
    assert tokens.shape == (len(data.images), 2, 16) and tokens.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(tokens, axis=2), 1.0, rtol=1e-5)
    q2, t2 = encode_split(model, data.images, data.reference, data.text, batch=512)
    np.testing.assert_allclose(queries, q2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tokens, t2, rtol=1e-5, atol=1e-6)
    model.eval()
    encode_split(model, data.images[:3], data.reference[:2] % 3, data.text[:2])
    assert not model.training
    with torch.no_grad():
        direct = model.encode_images(torch.from_numpy(data.images[:5])).numpy()
    np.testing.assert_allclose(tokens[:5], direct, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "hard"},
        {"method": "QuRe"},
        {"epochs": 0},
        {"batch_size": 0},
        {"n_def": 0},
        {"topk_k": 0},
        {"encode_batch": 0},
        {"lr": 0.0},
        {"weight_decay": -0.1},
        {"resume": True},
        {"resume": True, "checkpoint_dir": ""},
    ],
)
def test_bad_config(data, kwargs):
    cfg = config(**kwargs)
    with pytest.raises(ValueError):
        cfg.validate()
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        train(model, data, cfg)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_bad_data():
    good = make_data(n_pool=10, n_queries=4)
    kwargs = {
        "images": good.images,
        "reference": good.reference,
        "text": good.text,
        "target": good.target,
    }
    for name, value in [
        ("target", np.array([0, 1, 2, 10])),
        ("target", np.array([0, 1, -1, 3])),
        ("reference", np.array([0, 1, 2, 10])),
        ("reference", np.array([-1, 1, 2, 3])),
        ("reference", np.array([0, 1, 2])),
        ("text", good.text[:3]),
        ("text", good.text[:, 0]),
    ]:
        with pytest.raises(ValueError):
            CIRTrainData(**{**kwargs, name: value})
    one_image = CIRTrainData(
        images=good.images[:1],
        reference=np.zeros(2, dtype=np.int64),
        text=good.text[:2],
        target=np.zeros(2, dtype=np.int64),
    )
    with pytest.raises(ValueError):
        train(make_model(), one_image, config())
    no_queries = CIRTrainData(
        images=good.images,
        reference=np.zeros(0, dtype=np.int64),
        text=np.zeros((0, 5), dtype=np.int64),
        target=np.zeros(0, dtype=np.int64),
    )
    assert len(no_queries) == 0
    with pytest.raises(ValueError):
        train(make_model(), no_queries, config())


@pytest.mark.parametrize("method", ["qure", "topk"])
def test_mining_stays_inside_each_group(method):
    """FashionIQ mines within a category: bands only hold the query's group's gallery."""
    base = make_data()
    g, q = base.n_gallery, len(base)
    gallery_groups = (np.arange(g) >= g // 2).astype(np.int64)
    targets = np.where(np.arange(q) % 2 == 0, np.arange(q) % (g // 2), g // 2 + np.arange(q) % 7)
    query_groups = gallery_groups[targets]
    data = CIRTrainData(
        images=base.images,
        reference=base.reference,
        text=base.text,
        target=targets,
        query_groups=query_groups,
        gallery_groups=gallery_groups,
    )
    result = train(make_model(), data, config(method=method, epochs=4, n_def=2, topk_k=5))
    negatives = result.negatives
    assert negatives is not None and negatives.indices.size > 0
    for i in range(q):
        band = negatives[i]
        assert (gallery_groups[band] == query_groups[i]).all()
        assert targets[i] not in band
