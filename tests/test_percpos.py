"""The strongest published baseline in the trainer: NV-Retriever's TopK-PercPos, and K negatives
per query through the (B, K) reward loss."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import make_cir_data, make_tiny_model  # noqa: E402

from qure.torch import paired_scores, reward_loss  # noqa: E402
from qure.train import BatchLoss, TrainConfig, train  # noqa: E402
from qure.train.data import encode_split  # noqa: E402


def config(**kwargs):
    base = {"epochs": 4, "batch_size": 8, "progress": False, "device": "cpu", "n_def": 4}
    base.update(kwargs)
    return TrainConfig(**base)


def test_percpos_bands_are_the_first_survivors_of_the_margin():
    data = make_cir_data(n_pool=60, n_queries=30)
    result = train(make_tiny_model(), data, config(method="percpos"))
    bands = result.negatives
    assert bands.removed is not None and bands.scores is not None
    # Every kept item scores at most r - |r| * 0.05 and is at most 10 per query.
    rows = np.repeat(np.arange(len(bands)), bands.sizes)
    r = bands.target_score[rows]
    assert (bands.scores <= r - np.abs(r) * np.float32(0.05)).all()
    assert bands.sizes.max() <= 10
    assert all(data.target[q] not in bands[q] for q in range(len(bands)))
    # Four distinct negatives per query per epoch, never the target.
    for drawn in result.drawn:
        assert drawn.shape == (30, 4)
        assert (drawn != data.target[:, None]).all()
    mined = result.drawn[-1]
    for q in range(30):
        band = set(bands[q].tolist())
        from_band = [x for x in mined[q].tolist() if x in band]
        assert len(set(from_band)) == len(from_band)


def test_k_negatives_per_query_and_their_loss():
    data = make_cir_data(n_pool=60, n_queries=30)
    result = train(make_tiny_model(), data, config(method="qure", negatives_per_query=3))
    assert all(d.shape == (30, 3) for d in result.drawn)
    # The batch loss with K negatives is the softmax reward loss over (B, K) scores.
    model = make_tiny_model(1)
    loss = BatchLoss(model, reward=True)
    idx = np.arange(4)
    images = torch.from_numpy(data.images)
    ref, text = images[data.reference[idx]], torch.from_numpy(data.text[idx])
    targets = images[data.target[idx]]
    negatives = result.drawn[0][idx]
    got = loss(ref, text, targets, images[negatives.reshape(-1)], 1.0, [4], 0)
    queries = model.encode_queries(ref, text)
    neg = torch.stack(
        [paired_scores(queries, model.encode_images(images[negatives[:, j]])) for j in range(3)],
        dim=1,
    )
    expected = reward_loss(
        paired_scores(queries, model.encode_images(targets)), neg, model.temperature
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_percpos_settings_are_checked():
    with pytest.raises(ValueError, match="percpos_relative_margin"):
        config(method="percpos", percpos_relative_margin=1.5).validate()
    with pytest.raises(ValueError, match="negatives_per_query"):
        config(negatives_per_query=0).validate()
    assert config(method="percpos").negatives_k == 4
    assert config(method="qure").negatives_k == 1


def test_encode_split_is_exported():
    data = make_cir_data(n_pool=20, n_queries=5)
    q, g = encode_split(make_tiny_model(), data.images, data.reference, data.text)
    assert q.shape == (5, 16) and g.shape == (20, 2, 16)
