import torch

from fdfo_core.flow.paired_sampler import (
    ChurnSettings,
    churn_step,
    guided,
    overshoot_time,
    prior_churn,
    sample_euler,
    sample_pairs,
)
from fdfo_core.flow.schedules import flow_sigmas


def toy_velocity(x, t, cond):
    # A smooth, nonlinear, deterministic field that depends on the conditioning.
    tt = t.reshape(-1, 1, 1, 1)
    return torch.tanh(x) * (1 + tt) + cond["c"].reshape(-1, 1, 1, 1) * (1 - tt)


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_churn_step_with_zero_churn_is_the_euler_step_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g)
    v = torch.randn(4, 3, 5, 5, generator=g)
    noise = torch.randn(4, 3, 5, 5, generator=g)
    t, s = torch.full((4,), 0.7), torch.full((4,), 0.45)
    out = churn_step(x, t, s, v, torch.zeros(4), noise)
    assert torch.equal(out, x + (s - t).reshape(-1, 1, 1, 1) * v)
    assert torch.equal(overshoot_time(s, torch.zeros(4)), s)
    assert torch.equal(prior_churn(x, torch.zeros(4), noise), x)


def test_churn_step_lands_on_the_marginal_of_s():
    # Data is a point x0, so the exact velocity is v = (x_t - x0) / t and x_t = (1-t) x0 + t eps.
    torch.manual_seed(0)
    n, x0 = 400_000, 0.8
    for t, s, gval in [(0.9, 0.6, 0.05), (0.5, 0.2, 0.3), (0.3, 0.05, 1.0)]:
        eps = torch.randn(n, 1, 1, 1)
        xt = (1 - t) * x0 + t * eps
        v = (xt - x0) / t
        xs = churn_step(xt, torch.tensor(t), torch.tensor(s), v, torch.tensor(gval), torch.randn(n, 1, 1, 1))
        assert abs(float(xs.mean()) - (1 - s) * x0) < 4e-3
        assert abs(float(xs.std()) - s) < 4e-3


def test_prior_churn_keeps_unit_variance():
    torch.manual_seed(1)
    x = torch.randn(200_000, 1, 1, 1)
    y = prior_churn(x, torch.tensor(0.5), torch.randn_like(x))
    assert abs(float(y.std()) - 1) < 5e-3
    # and it is mostly the same noise (correlation 1 / (1 + g))
    corr = float((x * y).mean())
    assert abs(corr - 1 / 1.5) < 1e-2


def test_zero_churn_pairs_equal_the_plain_euler_sampler():
    sig = flow_sigmas(12, shift=3.0)
    cond = {"c": torch.tensor([0.3, -0.5, 1.0])}
    roll = sample_pairs(toy_velocity, cond, gens([1, 2, 3]), (2, 4, 4), sig, ChurnSettings("raw", 0.0))
    ref = sample_euler(toy_velocity, cond, gens([1, 2, 3]), (2, 4, 4), sig)
    assert torch.equal(roll.final[:3], ref)
    assert torch.equal(roll.final[3:], ref)


def test_churn_makes_branches_differ_slightly_and_records_every_step():
    sig = flow_sigmas(10)
    cond = {"c": torch.tensor([0.3, -0.5])}
    roll = sample_pairs(toy_velocity, cond, gens([5, 6]), (2, 4, 4), sig, ChurnSettings("raw", 0.0025))
    assert roll.states.shape == (4, 10, 2, 4, 4) and roll.velocities.shape == (4, 10, 2, 4, 4)
    diff = (roll.final[:2] - roll.final[2:]).abs().mean()
    weaker = sample_pairs(toy_velocity, cond, gens([5, 6]), (2, 4, 4), sig, ChurnSettings("raw", 0.0001))
    assert 0 < (weaker.final[:2] - weaker.final[2:]).abs().mean() < diff
    # The first recorded state of both branches is the shared noise, re-noised by the prior churn.
    assert not torch.equal(roll.states[0, 0], roll.states[2, 0])
    shared = torch.randn((2, 4, 4), generator=gens([5])[0])
    assert (roll.states[0, 0] - shared).abs().max() < 0.2
    # The recorded velocity is the one used at the recorded state.
    i = 4
    v = toy_velocity(roll.states[:, i], sig[i].expand(4), {"c": cond["c"].repeat(2)})
    torch.testing.assert_close(roll.velocities[:, i], v)


def test_a_pair_does_not_depend_on_its_batch():
    sig = flow_sigmas(8)
    for schedule in ("raw", "interval", "prior"):
        churn = ChurnSettings(schedule, 0.05)
        cond = {"c": torch.tensor([0.1, 0.2, 0.3])}
        together = sample_pairs(toy_velocity, cond, gens([7, 8, 9]), (1, 3, 3), sig, churn)
        alone = sample_pairs(toy_velocity, {"c": torch.tensor([0.2])}, gens([8]), (1, 3, 3), sig, churn)
        torch.testing.assert_close(together.final[[1, 4]], alone.final, atol=1e-6, rtol=0)


def test_cfg_combines_conditional_and_unconditional():
    cond = {"c": torch.tensor([1.0, 2.0])}
    uncond = {"c": torch.tensor([0.0])}
    x = torch.randn(2, 1, 2, 2)
    t = torch.tensor([0.5, 0.5])
    v = guided(toy_velocity, 3.0, uncond)(x, t, cond)
    vc = toy_velocity(x, t, cond)
    vu = toy_velocity(x, t, {"c": torch.zeros(2)})
    torch.testing.assert_close(v, vu + 3.0 * (vc - vu))
    assert guided(toy_velocity, 1.0, None) is toy_velocity
