"""Checkpoints from elsewhere never run code; a checkpoint write killed half-way leaves a loadable
``last.pt`` that ``resume=True`` continues from; cached gallery features follow everything they
depend on."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qure.checkpoint import (  # noqa: E402
    FORMAT,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from qure.train import train  # noqa: E402

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from test_train import assert_same_state, config, make_data, make_model  # noqa: E402


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return make_data()


def evil_checkpoints(folder: Path) -> dict[str, Path]:
    """The same payload as torch's zip format, as a bare pickle, and nested in a state dict."""
    marker = folder / "marker"
    paths = {"zip": folder / "evil_zip.pt", "raw": folder / "evil_raw.pt"}
    torch.save({"model": RunsCode(marker), "epoch": 0}, paths["zip"])
    paths["raw"].write_bytes(pickle.dumps(RunsCode(marker)))
    paths["nested"] = folder / "evil_nested.pt"
    torch.save({"weight": torch.ones(2), "extra": [RunsCode(marker)]}, paths["nested"])
    return paths


# --------------------------------------------------------------------------------------------
# no code runs


def test_a_malicious_checkpoint_is_refused_by_resume(data, tmp_path):
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    evil = evil_checkpoints(tmp_path)
    for kind in ("zip", "raw"):
        shutil.copy(evil[kind], ckpt / "last.pt")
        cfg = config(method="qure", epochs=2, checkpoint_dir=str(ckpt), resume=True)
        with pytest.raises(ValueError, match=r"refused to load .*last\.pt.*could run code"):
            train(make_model(), data, cfg)
        assert not (tmp_path / "marker").exists(), kind


def test_a_malicious_checkpoint_is_refused_by_evaluation(tmp_path):
    evil = evil_checkpoints(tmp_path)
    for path in evil.values():
        with pytest.raises(ValueError, match="refused to load"):
            load_model_state(path)
        with pytest.raises(ValueError, match="refused to load"):
            load_checkpoint(path)
    assert not (tmp_path / "marker").exists()


def test_qure_evaluate_refuses_a_malicious_checkpoint(tmp_path, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("PIL")
    from qure.cli import main

    evil = evil_checkpoints(tmp_path)
    config_path = TESTS / "fixtures" / "configs" / "cirr.json"
    args = ["evaluate", "--config", str(config_path), "--checkpoint", str(evil["zip"])]
    assert main([*args, "--output", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "refused to load" in capsys.readouterr().err
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "truncated, corrupt or not a torch checkpoint"),
        # Bytes the safe unpickler cannot parse, or that parse as a foreign pickle's opcodes.
        (b"\x00\x01 not a checkpoint", "refused to load .*corrupt bytes"),
        (b"certainly not a checkpoint", "refused to load .*corrupt bytes"),
    ],
)
def test_damaged_files_are_value_errors(tmp_path, content, problem):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    for load in (load_checkpoint, load_model_state):
        with pytest.raises(ValueError, match=problem) as info:
            load(path)
        assert str(path) in str(info.value)


def test_truncated_checkpoints_are_value_errors(data, tmp_path):
    train(make_model(), data, config(method="qure", epochs=2, checkpoint_dir=str(tmp_path)))
    full = (tmp_path / "last.pt").read_bytes()
    for cut in (1, len(full) // 4, len(full) // 2, len(full) - 10):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(full[:cut])
        with pytest.raises(ValueError, match=str(path)):
            load_checkpoint(path)


def test_foreign_but_safe_files(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a qure training checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(ValueError, match="neither a qure checkpoint nor a state dict"):
        load_model_state(tmp_path / "list.pt")
    torch.save({"epoch": 3}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match=r"missing \['model'"):
        load_checkpoint(tmp_path / "dict.pt")
    torch.save({"format": FORMAT, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_plain_state_dicts_load_for_evaluation(tmp_path):
    model = make_model()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": model.state_dict(), "step": 7}, tmp_path / "wrapped.pt")
    for name in ("plain.pt", "wrapped.pt"):
        state = load_model_state(tmp_path / name)
        fresh = make_model(seed=3)
        fresh.load_state_dict(state)
        assert_same_state(model, fresh)


# --------------------------------------------------------------------------------------------
# what goes in comes out


def test_save_and_load_round_trip(tmp_path):
    model = make_model()
    history = [
        {"epoch": 0, "loss": 0.1 + 0.2, "lr": 1e-3, "mined": False, "note": None},
        {"epoch": 1, "loss": float("inf"), "mining": {"start_q10": 0.25, "degenerate": 1 / 3}},
        {"epoch": 2, "probe": np.float32(0.7), "count": np.int64(3)},
    ]
    negatives = {
        "indptr": np.array([0, 2, 2, 5]),
        "indices": np.array([4, 1, 7, 8, 9], np.int32),
        "target_rank": np.array([0, 3, 1]),
        "drops": np.array([[0, 2], [-1, -1], [1, 4]]),
        "tail_length": None,
    }
    state = {
        "model": model.state_dict(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999)}]},
        "scheduler": {"last_epoch": 2},
        "scaler": {},
        "epoch": 2,
        "history": history,
        "negatives": negatives,
        "config": {"method": "qure", "max_rank": None, "lr": 1e-3},
    }
    save_checkpoint(state, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    got = load_checkpoint(tmp_path / "last.pt")
    assert got["format"] == FORMAT and got["epoch"] == 2
    assert got["history"][:2] == history[:2]
    assert got["history"][2] == {"epoch": 2, "probe": float(np.float32(0.7)), "count": 3}
    assert got["config"] == state["config"]
    assert got["negatives"]["tail_length"] is None
    for name in ("indptr", "indices", "target_rank", "drops"):
        assert got["negatives"][name].dtype == np.int64
        np.testing.assert_array_equal(got["negatives"][name], negatives[name])
    for name, value in state["model"].items():
        assert torch.equal(got["model"][name], value)
    # Stored as tensors and JSON: a plain weights-only load reads it with no allow-list.
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert isinstance(raw["history"], str) and isinstance(raw["config"], str)


def test_checkpoints_of_older_qure_still_load_and_resume(data, tmp_path):
    """Before this format the bands were NumPy arrays and history/config plain objects."""
    straight = make_model()
    result = train(straight, data, config(method="qure", epochs=4, n_def=2))
    run = tmp_path / "run"

    def stop_after_epoch_2(model, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return {}

    cfg = config(method="qure", epochs=4, n_def=2, checkpoint_dir=str(run))
    with pytest.raises(KeyboardInterrupt):
        train(make_model(), data, cfg, evaluate=stop_after_epoch_2)
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 2
    legacy = {k: v for k, v in state.items() if k not in ("format", "version")}
    torch.save(legacy, run / "last.pt")  # the old writer: NumPy arrays pickled as such
    resumed = make_model(seed=4)
    cfg = config(method="qure", epochs=4, n_def=2, checkpoint_dir=str(run), resume=True)
    result_b = train(resumed, data, cfg)
    assert_same_state(straight, resumed)
    assert result_b.negatives == result.negatives
    assert [r["epoch"] for r in result_b.history] == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------
# durability: SIGKILL in the middle of writing a checkpoint

_KILLED_RUN = """
import io, os, signal, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from test_train import config, make_data, make_model
from qure.train import train

real_save = torch.save

def save_then_die(obj, f, *args, **kwargs):
    if obj["epoch"] == {kill_at}:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])  # half of the checkpoint is on disk...
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)  # ...when the process dies
    return real_save(obj, f, *args, **kwargs)

torch.save = save_then_die
cfg = config(method={method!r}, epochs=4, n_def=2, seed=5, checkpoint_dir={ckpt!r})
train(make_model(), make_data(), cfg)
"""


@pytest.mark.parametrize(("method", "kill_at"), [("qure", 2), ("qure", 0), ("topk", 3)])
def test_sigkill_while_writing_a_checkpoint(data, tmp_path, method, kill_at):
    ckpt = tmp_path / "run"
    code = _KILLED_RUN.format(tests=str(TESTS), kill_at=kill_at, method=method, ckpt=str(ckpt))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert (ckpt / "last.tmp").is_file()  # the torn write
    if kill_at == 0:
        assert not (ckpt / "last.pt").exists()  # nothing was ever committed
    else:
        assert load_checkpoint(ckpt / "last.pt")["epoch"] == kill_at - 1
    # Resuming continues from the last whole checkpoint and ends where an uninterrupted run does.
    straight = make_model()
    result_a = train(straight, data, config(method=method, epochs=4, n_def=2, seed=5))
    # (Killed before the first checkpoint, resume starts afresh: from the same initial model.)
    resumed = make_model() if kill_at == 0 else make_model(seed=11)
    cfg = config(method=method, epochs=4, n_def=2, seed=5, checkpoint_dir=str(ckpt), resume=True)
    result_b = train(resumed, data, cfg)
    assert_same_state(straight, resumed)
    assert result_b.negatives == result_a.negatives
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt"]
    assert load_checkpoint(ckpt / "last.pt")["epoch"] == 3


# --------------------------------------------------------------------------------------------
# the gallery-feature cache of `qure evaluate`


def test_feature_cache_key_follows_what_features_depend_on(tmp_path):
    from qure.datasets import CIRSplit
    from qure.experiments import feature_cache_key
    from qure.models import TargetPad

    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"weights")
    split = CIRSplit(
        name="cirr/val",
        images=[tmp_path / f"{i}.png" for i in range(3)],
        image_names=["0", "1", "2"],
        n_gallery=3,
        reference=np.array([0]),
        texts=["make it red"],
        target=np.array([1]),
        query_ids=["q0"],
    )
    model = make_model()
    spec = {"backbone": "tiny", "config": {"vocab_size": 12, "dim": 16}}
    key = feature_cache_key(checkpoint, spec, model, split)
    assert key == feature_cache_key(checkpoint, dict(spec), model, split)  # deterministic

    other_spec = {"backbone": "tiny", "config": {"vocab_size": 12, "dim": 32}}
    assert feature_cache_key(checkpoint, other_spec, model, split) != key
    model.preprocess = TargetPad(size=224)
    with_224 = feature_cache_key(checkpoint, spec, model, split)
    model.preprocess = TargetPad(size=336)
    assert feature_cache_key(checkpoint, spec, model, split) != with_224 != key
    del model.preprocess
    reordered = CIRSplit(**{**split.__dict__, "images": split.images[::-1]})
    assert feature_cache_key(checkpoint, spec, model, reordered) != key
    renamed = CIRSplit(**{**split.__dict__, "name": "cirr/test1"})
    assert feature_cache_key(checkpoint, spec, model, renamed) != key
    os.utime(checkpoint, ns=(1, 1))  # a new checkpoint at the same path
    assert feature_cache_key(checkpoint, spec, model, split) != key


def test_evaluation_does_not_reuse_features_of_another_image_list(tmp_path):
    """Same checkpoint and output folder, but the split's images changed: the cached features
    of the first evaluation must not be used for the second."""
    pytest.importorskip("transformers")
    pytest.importorskip("PIL")
    from qure.cli import main

    fixtures = TESTS / "fixtures"
    root = tmp_path / "cirr"
    shutil.copytree(fixtures / "cirr", root)
    config_path = tmp_path / "cirr.json"
    spec = json.loads((fixtures / "configs" / "cirr.json").read_text())
    spec["dataset"]["root"] = str(root)
    spec["train"]["epochs"] = 1
    config_path.write_text(json.dumps(spec))
    out = tmp_path / "out"
    common = ["--config", str(config_path), "--output", str(out), "--no-progress"]
    assert main(["train", *common]) == 0
    evaluate = ["evaluate", *common, "--checkpoint", str(out / "last.pt")]
    assert main(evaluate) == 0
    assert len(list((out / "features").glob("*.gallery.npy"))) == 1
    assert main(evaluate) == 0  # the same everything: reused, no new file
    assert len(list((out / "features").glob("*.gallery.npy"))) == 1

    # Swap two gallery images behind the same names.
    split_file = root / "image_splits" / "split.rc2.val.json"
    images = json.loads(split_file.read_text())
    names = sorted(images)
    images[names[0]], images[names[1]] = images[names[1]], images[names[0]]
    split_file.write_text(json.dumps(images))
    assert main(evaluate) == 0
    cached = sorted((out / "features").glob("*.gallery.npy"), key=lambda p: p.stat().st_mtime_ns)
    assert len(cached) == 2
    # The gallery is sorted by name: rows 0 and 1 changed places, nothing else changed.
    first, second = (np.load(p) for p in cached)
    expected = first.copy()
    expected[[0, 1]] = first[[1, 0]]
    np.testing.assert_allclose(second, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(second, first)
