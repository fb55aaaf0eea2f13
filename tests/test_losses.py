"""Tests of ``qure.torch``: the reward loss, InfoNCE and the token-scoring helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import qure  # noqa: E402
from qure.torch import info_nce, max_token_scores, paired_scores, reward_loss  # noqa: E402

TEMPERATURES = [1.0, 0.07, 0.5, 3.0]


def randn(*shape, seed=0, dtype=None):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype or torch.float32)


# --------------------------------------------------------------------------------------------
# reward loss: one negative


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_reward_loss_is_bradley_terry(tau):
    p, n = randn(16, seed=1), randn(16, seed=2)
    expected = torch.stack(
        [-torch.log(torch.sigmoid((p[i] - n[i]) / tau)) for i in range(16)]
    ).mean()
    torch.testing.assert_close(reward_loss(p, n, tau), expected, rtol=1e-5, atol=1e-6)
    # In float64 by hand with math.
    expected64 = np.mean([math.log1p(math.exp(-(float(a) - float(b)) / tau)) for a, b in zip(p, n)])
    assert float(reward_loss(p.double(), n.double(), tau)) == pytest.approx(expected64, rel=1e-12)


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_reward_loss_equals_released_kl_form(tau):
    # The released code: KL(one-hot at the positive || softmax([s_pos, s_neg] / tau)).
    p, n = randn(12, seed=3), randn(12, seed=4)
    logits = torch.stack([p, n], dim=1) / tau
    target = torch.zeros_like(logits)
    target[:, 0] = 1.0
    kl = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
    torch.testing.assert_close(reward_loss(p, n, tau), kl, rtol=1e-5, atol=1e-6)
    # The same KL by hand (0 * log 0 = 0).
    q = torch.softmax(logits, dim=1)
    by_hand = (target[:, 0] * torch.log(target[:, 0] / q[:, 0])).mean()
    torch.testing.assert_close(reward_loss(p, n, tau), by_hand, rtol=1e-5, atol=1e-6)


def test_reward_loss_known_values():
    zero = torch.zeros(3)
    torch.testing.assert_close(reward_loss(zero, zero), torch.tensor(math.log(2.0)))
    # Far apart scores: stable (no inf / nan), ~0 or ~ the margin.
    big = torch.tensor([100.0])
    assert float(reward_loss(big, -big, 0.01)) == pytest.approx(0.0, abs=1e-30)
    assert float(reward_loss(-big, big, 0.01)) == pytest.approx(20000.0, rel=1e-6)
    grad_in = torch.tensor([-100.0], requires_grad=True)
    reward_loss(grad_in, big, 0.01).backward()
    assert torch.isfinite(grad_in.grad).all()


def test_reward_loss_prefers_the_positive():
    n = torch.zeros(5)
    losses = [float(reward_loss(torch.full((5,), v), n, 0.1)) for v in (-1.0, 0.0, 0.5, 2.0)]
    assert losses == sorted(losses, reverse=True)


def test_b1_negatives_equal_b_negatives():
    p, n = randn(10, seed=5), randn(10, seed=6)
    for tau in TEMPERATURES:
        torch.testing.assert_close(
            reward_loss(p, n[:, None], tau), reward_loss(p, n, tau), rtol=1e-6, atol=1e-7
        )


# --------------------------------------------------------------------------------------------
# reward loss: K negatives and masks


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("tau", [1.0, 0.07])
def test_k_negatives_softmax(k, tau):
    p, n = randn(8, seed=7), randn(8, k, seed=8)
    per_query = [
        -torch.log_softmax(torch.cat([p[i : i + 1], n[i]]) / tau, dim=0)[0] for i in range(8)
    ]
    torch.testing.assert_close(
        reward_loss(p, n, tau), torch.stack(per_query).mean(), rtol=1e-5, atol=1e-6
    )
    # Cross-entropy with label 0 says the same.
    logits = torch.cat([p[:, None], n], dim=1) / tau
    ce = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(reward_loss(p, n, tau), ce, rtol=1e-5, atol=1e-6)


def test_neg_mask_drops_masked_negatives():
    p, n = randn(6, seed=9), randn(6, 4, seed=10)
    mask = torch.tensor(
        [
            [True, True, True, True],
            [True, False, True, False],
            [False, False, False, True],
            [False, True, True, True],
            [True, False, False, False],
            [False, False, True, False],
        ]
    )
    for tau in (1.0, 0.2):
        per_query = [
            -torch.log_softmax(torch.cat([p[i : i + 1], n[i][mask[i]]]) / tau, dim=0)[0]
            for i in range(6)
        ]
        expected = torch.stack(per_query).mean()
        torch.testing.assert_close(reward_loss(p, n, tau, mask), expected, rtol=1e-5, atol=1e-6)
    # All-true mask = no mask; a single kept negative = the one-negative loss.
    torch.testing.assert_close(
        reward_loss(p, n, 0.3, torch.ones(6, 4, dtype=torch.bool)), reward_loss(p, n, 0.3)
    )
    one = torch.zeros(6, 4, dtype=torch.bool)
    one[:, 2] = True
    torch.testing.assert_close(
        reward_loss(p, n, 0.3, one), reward_loss(p, n[:, 2], 0.3), rtol=1e-6, atol=1e-7
    )


def test_masked_negatives_do_not_leak():
    # Masked entries may hold anything (inf, nan): no effect on the loss or the gradients.
    p = torch.tensor([1.0, 2.0])
    clean = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    dirty = torch.tensor([[0.0, float("nan")], [1.0, 2.0]], requires_grad=True)
    mask = torch.tensor([[True, False], [True, True]])
    loss = reward_loss(p, dirty, 1.0, mask)
    torch.testing.assert_close(loss, reward_loss(p, clean, 1.0, mask))
    loss.backward()
    assert torch.isfinite(dirty.grad).all()
    assert dirty.grad[0, 1] == 0


def test_fully_masked_row_contributes_zero():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    n = torch.tensor([[0.5, 0.1], [3.0, 4.0]])
    mask = torch.tensor([[True, True], [False, False]])
    loss = reward_loss(p, n, 1.0, mask)
    first = -torch.log_softmax(torch.tensor([1.0, 0.5, 0.1]), dim=0)[0]
    torch.testing.assert_close(loss, first / 2)
    loss.backward()
    assert torch.isfinite(p.grad).all() and p.grad[1] == 0


# --------------------------------------------------------------------------------------------
# temperature


def test_tensor_temperature_gets_a_gradient():
    log_tau = torch.tensor(math.log(0.5), requires_grad=True)
    p, n = randn(7, seed=11), randn(7, seed=12)
    loss = reward_loss(p, n, log_tau.exp())
    torch.testing.assert_close(loss, reward_loss(p, n, 0.5))
    loss.backward()
    assert log_tau.grad is not None and torch.isfinite(log_tau.grad) and log_tau.grad != 0
    # d/dtau of mean softplus(-(p - n) / tau) = mean sigmoid(-(p-n)/tau) * (p - n) / tau^2.
    d = (p - n).double()
    expected = (torch.sigmoid(-d / 0.5) * d / 0.25).mean() * 0.5  # times dtau/dlog_tau
    assert float(log_tau.grad) == pytest.approx(float(expected), rel=1e-4)

    for shape in [(), (1,), (1, 1)]:
        tau = torch.full(shape, 0.3, requires_grad=True)
        reward_loss(p, randn(7, 3, seed=13), tau).backward()
        assert tau.grad is not None and tau.grad.shape == tau.shape
        tau = torch.full(shape, 0.3, requires_grad=True)
        info_nce(randn(4, 4, seed=14), tau).backward()
        assert tau.grad is not None and tau.grad.shape == tau.shape


def test_model_temperature_is_accepted():
    from qure.models import TinyCIRModel

    model = TinyCIRModel(5)
    p, n = randn(4, seed=15), randn(4, seed=16)
    reward_loss(p, n, model.temperature).backward()
    assert model.log_temperature.grad is not None


# --------------------------------------------------------------------------------------------
# gradcheck


def test_gradcheck_reward_loss_one_negative():
    p = randn(5, seed=20, dtype=torch.float64).requires_grad_()
    n = randn(5, seed=21, dtype=torch.float64).requires_grad_()
    tau = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(reward_loss, (p, n, tau))
    assert torch.autograd.gradcheck(lambda a, b: reward_loss(a, b, 0.07), (p, n))


def test_gradcheck_reward_loss_k_negatives():
    p = randn(4, seed=22, dtype=torch.float64).requires_grad_()
    n = randn(4, 3, seed=23, dtype=torch.float64).requires_grad_()
    tau = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(reward_loss, (p, n, tau))
    mask = torch.tensor([[True, False, True], [True, True, True], [False, False, True], [1, 0, 0]])
    mask = mask.bool()
    assert torch.autograd.gradcheck(lambda a, b, t: reward_loss(a, b, t, mask), (p, n, tau))


def test_gradcheck_info_nce():
    s = randn(5, 5, seed=24, dtype=torch.float64).requires_grad_()
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(info_nce, (s, tau))


def test_gradcheck_scoring_helpers():
    q = randn(3, 4, seed=25, dtype=torch.float64).requires_grad_()
    tokens = randn(5, 2, 4, seed=26, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(max_token_scores, (q, tokens))
    paired = randn(3, 2, 4, seed=27, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(paired_scores, (q, paired))


# --------------------------------------------------------------------------------------------
# InfoNCE


@pytest.mark.parametrize("b", [1, 2, 9])
@pytest.mark.parametrize("tau", [1.0, 0.07])
def test_info_nce_is_cross_entropy_on_the_diagonal(b, tau):
    s = randn(b, b, seed=b)
    expected = F.cross_entropy(s / tau, torch.arange(b))
    torch.testing.assert_close(info_nce(s, tau), expected)
    by_hand = torch.stack([-torch.log_softmax(s[i] / tau, dim=0)[i] for i in range(b)]).mean()
    torch.testing.assert_close(info_nce(s, tau), by_hand, rtol=1e-5, atol=1e-6)


def test_info_nce_two_by_two_equals_reward_loss():
    # With B = 2, each row has one negative: the reward loss on (diagonal, off-diagonal).
    s = randn(2, 2, seed=30)
    torch.testing.assert_close(
        info_nce(s, 0.2), reward_loss(s.diagonal(), s.flip(1).diagonal(), 0.2)
    )


# --------------------------------------------------------------------------------------------
# scoring helpers


def normalized(*shape, seed):
    return F.normalize(randn(*shape, seed=seed), dim=-1)


def test_max_token_scores_equals_loops_and_qure_score():
    q, tokens = normalized(6, 16, seed=40), normalized(9, 4, 16, seed=41)
    got = max_token_scores(q, tokens)
    assert got.shape == (6, 9)
    loops = torch.empty(6, 9)
    for b in range(6):
        for m in range(9):
            loops[b, m] = max(float(q[b] @ tokens[m, t]) for t in range(4))
    torch.testing.assert_close(got, loops, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.numpy(), qure.score(q, tokens), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        got.numpy(), qure.score(q.numpy(), tokens.numpy()), rtol=1e-5, atol=1e-6
    )


def test_paired_scores_equals_loops_and_diagonal():
    q, tokens = normalized(7, 12, seed=42), normalized(7, 3, 12, seed=43)
    got = paired_scores(q, tokens)
    assert got.shape == (7,)
    loops = torch.tensor([max(float(q[b] @ tokens[b, t]) for t in range(3)) for b in range(7)])
    torch.testing.assert_close(got, loops, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, max_token_scores(q, tokens).diagonal(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.numpy(), np.diag(qure.score(q, tokens)), rtol=1e-5, atol=1e-6)


def test_single_token_is_plain_inner_product():
    q, g = normalized(4, 8, seed=44), normalized(5, 8, seed=45)
    torch.testing.assert_close(max_token_scores(q, g[:, None, :]), q @ g.T)
    np.testing.assert_allclose(qure.score(q, g), (q @ g.T).numpy(), rtol=1e-5, atol=1e-6)


def test_max_token_gradient_goes_to_the_best_token():
    q = torch.tensor([[1.0, 0.0]])
    tokens = torch.tensor([[[0.9, 0.1], [0.1, 0.9]]], requires_grad=True)
    max_token_scores(q, tokens).sum().backward()
    torch.testing.assert_close(tokens.grad, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "tau", [0.0, -1.0, float("nan"), torch.tensor(0.0), torch.tensor(-0.5), torch.tensor([-1.0])]
)
def test_non_positive_temperature(tau):
    p, n = torch.zeros(3), torch.zeros(3)
    with pytest.raises(ValueError):
        reward_loss(p, n, tau)
    with pytest.raises(ValueError):
        reward_loss(p, n[:, None], tau)
    with pytest.raises(ValueError):
        info_nce(torch.zeros(3, 3), tau)


def test_non_scalar_temperature():
    with pytest.raises(ValueError):
        reward_loss(torch.zeros(3), torch.zeros(3), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError):
        info_nce(torch.zeros(2, 2), torch.ones(2))


def test_shape_mismatch():
    p = torch.zeros(4)
    with pytest.raises(ValueError):
        reward_loss(p, torch.zeros(5))
    with pytest.raises(ValueError):
        reward_loss(p, torch.zeros(5, 2))
    with pytest.raises(ValueError):
        reward_loss(p, torch.zeros(4, 2, 1))
    with pytest.raises(ValueError):
        reward_loss(p, torch.zeros(()))
    with pytest.raises(ValueError):
        reward_loss(p[:, None], torch.zeros(4, 1))
    with pytest.raises(ValueError):
        reward_loss(torch.zeros(()), torch.zeros(()))
    # Masks need (B, K) negatives of the same shape.
    with pytest.raises(ValueError):
        reward_loss(p, torch.zeros(4), neg_mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError):
        reward_loss(p, torch.zeros(4, 3), neg_mask=torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(ValueError):
        reward_loss(p, torch.zeros(4, 3), neg_mask=torch.ones(3, dtype=torch.bool))


def test_non_square_scores():
    for shape in [(2, 3), (3, 2), (4,), (2, 2, 2), ()]:
        with pytest.raises(ValueError):
            info_nce(torch.zeros(shape))


def test_scoring_helpers_reject_mismatched_shapes():
    # Not validated by qure itself: torch's einsum refuses them.
    with pytest.raises((ValueError, RuntimeError)):
        max_token_scores(torch.zeros(2, 4), torch.zeros(3, 5, 6))
    with pytest.raises((ValueError, RuntimeError)):
        paired_scores(torch.zeros(2, 4), torch.zeros(3, 5, 4))


def test_nan_tensor_temperature_is_refused():
    # A tensor NaN must be refused like a float NaN.
    with pytest.raises(ValueError):
        reward_loss(torch.zeros(3), torch.zeros(3), torch.tensor(float("nan")))


def test_integer_neg_mask_is_read_as_bool():
    # A 0/1 integer mask means the same as its boolean version.
    p, n = randn(2, seed=50), randn(2, 3, seed=51)
    as_int = torch.tensor([[1, 0, 1], [0, 0, 1]])
    torch.testing.assert_close(
        reward_loss(p, n, 1.0, as_int), reward_loss(p, n, 1.0, as_int.bool())
    )
