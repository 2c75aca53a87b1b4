"""DiffusionNFT's core identities (arXiv 2509.16117) and its trainer on the 2-D flow."""

import pytest
import torch

from fdfo_core.methods import build_trainer, implicit_policies, nft_loss, optimality_probability, soft_update_
from fdfo_core.methods.diffusion_nft import soft_update_eta
from fdfo_core.errors import ConfigError
from fdfo_core.config import FDFOConfig
from fdfo_core.run.hooks import Callbacks, TrainingError

from flow2d import MinusDistance, PointBackend, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


def _mean(x):
    return x.mean(dim=tuple(range(1, x.ndim)))


def _fields(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    v, v_old, v_target = (torch.randn(b, 4, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.rand(b, generator=g, dtype=torch.float64) * 0.9 + 0.05
    return v, v_old, v_target, t


# --- rewards -> optimality probability -----------------------------------------------------------

def test_optimality_probability_maps_group_advantages_into_0_1():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    r = optimality_probability(rewards, 3, clip=5.0, global_std=False)
    # (R - group mean) / std / clip: -1/5 and +1/5 around 1/2; equal rewards give exactly 1/2.
    torch.testing.assert_close(r[:3], torch.tensor([0.4, 0.5, 0.6]), atol=1e-4, rtol=0)
    assert torch.all(r[3:] == 0.5)
    big = optimality_probability(torch.tensor([0.0, 0.0, 0.0, 100.0]), 4, clip=1.0)
    assert float(big.min()) >= 0.0 and float(big.max()) == 1.0  # clipped at +-1 before the map
    # The global std (published default) scales every group by the same number.
    g = optimality_probability(torch.tensor([0.0, 1.0, 10.0, 20.0]), 2, clip=1.0, global_std=True)
    s = torch.tensor([0.0, 1.0, 10.0, 20.0]).std()
    torch.testing.assert_close(g, (0.5 + 0.5 * (torch.tensor([-0.5, 0.5, -5, 5]) / (s + 1e-4)).clamp(-1, 1)).float())
    with pytest.raises(ValueError, match="groups of 4"):
        optimality_probability(torch.zeros(6), 4)


# --- the loss --------------------------------------------------------------------------------------

def test_implicit_policies_mirror_around_the_old_velocity():
    v, v_old, _, _ = _fields()
    pos, neg = implicit_policies(v, v_old, 0.3)
    torch.testing.assert_close(pos, 0.7 * v_old + 0.3 * v)
    torch.testing.assert_close(neg, 1.3 * v_old - 0.3 * v)
    torch.testing.assert_close(pos + neg, 2 * v_old)
    torch.testing.assert_close(implicit_policies(v, v_old, 1.0)[0], v)


@pytest.mark.parametrize("beta", [1.0, 0.1, 2.5])
def test_equal_rewards_give_the_plain_flow_matching_loss_toward_the_old_policy(beta):
    v, v_old, v_target, t = _fields()
    v.requires_grad_(True)
    loss = nft_loss(v, v_old, v_target, t, torch.full((6,), 0.5, dtype=torch.float64), beta=beta, adaptive=False)
    fm = beta * _mean((v - v_old) ** 2)  # flow matching of v onto the old policy's velocity
    torch.testing.assert_close(loss, (fm + _mean((v_old - v_target) ** 2) / beta).float(), rtol=1e-5, atol=1e-6)
    (g_loss,) = torch.autograd.grad(loss.sum(), v)
    (g_fm,) = torch.autograd.grad(fm.sum(), v)
    torch.testing.assert_close(g_loss.double(), g_fm, rtol=1e-4, atol=1e-6)


def test_loss_expands_into_trust_region_plus_reward_pull():
    v, v_old, v_target, t = _fields(seed=1)
    r = torch.tensor([0.0, 0.1, 0.5, 0.7, 0.9, 1.0], dtype=torch.float64)
    beta = 0.4
    e = v_old - v_target
    expected = beta * _mean((v - v_old) ** 2) + 2 * (2 * r - 1) * _mean((v - v_old) * e) + _mean(e**2) / beta
    torch.testing.assert_close(nft_loss(v, v_old, v_target, t, r, beta=beta, adaptive=False), expected.float(),
                               rtol=1e-5, atol=1e-6)


def test_adaptive_weighting_is_the_self_normalised_x0_error():
    v, v_old, v_target, t = _fields(seed=2)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(v.shape, generator=g, dtype=torch.float64)
    eps = x0 + v_target  # v_target = eps - x0
    tt = t.reshape(-1, 1, 1, 1)
    x_t = (1 - tt) * x0 + tt * eps
    r, beta = torch.tensor([0.2, 0.4, 0.5, 0.6, 0.8, 1.0], dtype=torch.float64), 0.7

    def x0_loss(vp):  # written on the x0 prediction, as the paper states it
        err = (x_t - tt * vp) - x0
        return _mean(err**2) / _mean(err.abs())

    pos, neg = 0.3 * v_old + 0.7 * v, 1.7 * v_old - 0.7 * v  # the implicit policies, by hand
    expected = (r * x0_loss(pos) + (1 - r) * x0_loss(neg)) / beta
    torch.testing.assert_close(nft_loss(v, v_old, v_target, t, r, beta=beta, adaptive=True), expected.float(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adaptive", [False, True])
def test_gradient_signs_at_the_old_policy(adaptive):
    """At v = v_old, descent moves v toward the sample's flow-matching target when r > 1/2, away
    from it when r < 1/2, and not at all when r = 1/2."""
    _, v_old, v_target, t = _fields(seed=4)
    for r_value, sign in ((1.0, 1), (0.8, 1), (0.5, 0), (0.2, -1), (0.0, -1)):
        v = v_old.clone().requires_grad_(True)
        r = torch.full((6,), r_value, dtype=torch.float64)
        (grad,) = torch.autograd.grad(nft_loss(v, v_old, v_target, t, r, beta=0.5, adaptive=adaptive).sum(), v)
        step = -grad.double()
        toward = _mean(step * (v_target - v_old))
        if sign == 0:
            assert float(step.abs().max()) == 0.0
        else:
            assert torch.all(sign * toward > 0), (r_value, toward)


# --- the soft update ------------------------------------------------------------------------------

def test_soft_update_schedule_and_rule():
    # The published schedules: eta = min(0.001 i, 0.5); and 0 for 75 steps, then min(0.0075 (i - 75), 0.999).
    assert [soft_update_eta(i, 0.001, 0.5) for i in (0, 1, 100, 500, 5000)] == pytest.approx([0, 0.001, 0.1, 0.5, 0.5])
    assert [soft_update_eta(i, 0.0075, 0.999, 75) for i in (0, 74, 75, 100, 1000)] == pytest.approx(
        [0, 0, 0, 0.1875, 0.999])
    old, new = [torch.tensor([1.0, 2.0]), torch.tensor([[4.0]])], [torch.tensor([3.0, 6.0]), torch.tensor([[0.0]])]
    soft_update_(old, new, 0.25)
    torch.testing.assert_close(old[0], torch.tensor([2.5, 5.0]))
    torch.testing.assert_close(old[1], torch.tensor([[1.0]]))
    soft_update_(old, new, 0.0)  # eta = 0: fully on-policy
    torch.testing.assert_close(old[0], new[0])


# --- the trainer on the 2-D flow ------------------------------------------------------------------

@pytest.fixture(scope="module")
def base():
    return pretrain(steps=1500)


def _cfg(**kw):
    values = dict(method="diffusion_nft", num_steps=10, epochs=2, height=16, width=16, train_batch_size=4096,
                  sample_batch_size=256, decode_batch_size=512, checkpoint_every=0, nft_group_size=8,
                  nft_groups_per_epoch=16, optimizer_steps_per_epoch=2, lr=1e-3)
    values.update(kw)
    return FDFOConfig(**values)


class Constant(MinusDistance):
    def __call__(self, points, prompts):
        return torch.zeros(points.shape[0])


def _params(be):
    return [p.detach().clone() for p in be.trainable_parameters()]


def test_equal_rewards_leave_an_on_policy_adapter_where_it_is(base):
    be = PointBackend(base)
    before = _params(be)
    tr = build_trainer(be, Constant(), ["x"], _cfg(nft_kl_beta=0.0, weight_decay=0.0), callbacks=Callbacks(log=None))
    tr.train()
    for a, b in zip(before, _params(be)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_equal_rewards_pull_the_trained_policy_back_to_the_sampling_policy(base):
    """With eta = 1 the sampling policy stays the initial adapter; a trained adapter that has moved
    away from it is pulled back by plain flow matching when every reward is equal."""
    be = PointBackend(base)
    init = _params(be)
    cfg = _cfg(nft_kl_beta=0.0, weight_decay=0.0, nft_decay_rate=1.0, nft_decay_max=1.0, epochs=6, lr=3e-3)
    tr = build_trainer(be, Constant(), ["x"], cfg, callbacks=Callbacks(log=None))
    tr.old_policy_state()  # the sampling policy is fixed at first use: the initial adapter
    with torch.no_grad():
        for p in be.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    tr.train()
    devs = [m["nft_old_deviation"] for m in tr.history]
    assert devs[-1] < 0.5 * devs[0], devs
    for a, b in zip(init, tr.old_policy_state()):  # eta = 1: the sampling policy never moved
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sampling_policy_follows_softly(base):
    be = PointBackend(base)
    cfg = _cfg(nft_decay_rate=0.25, nft_decay_max=0.6, epochs=1)  # 2 optimizer steps -> eta = 0.5
    tr = build_trainer(be, MinusDistance(), ["x"], cfg, callbacks=Callbacks(log=None))
    init = _params(be)
    tr.train()
    assert tr.history[-1]["nft_eta"] == pytest.approx(0.5)
    for o, a, b in zip(tr.old_policy_state(), init, _params(be)):
        torch.testing.assert_close(o, 0.5 * a + 0.5 * b)
    assert any(not torch.equal(a, b) for a, b in zip(init, _params(be)))


def test_improves_the_2d_reward_and_resumes_exactly(base, tmp_path):
    from flow2d import mean_reward

    be = PointBackend(base)
    start = mean_reward(be)
    cfg = _cfg(epochs=3, nft_decay_rate=0.1)
    straight = build_trainer(be, MinusDistance(), ["x"], cfg, callbacks=Callbacks(log=None))
    straight.train()
    assert mean_reward(be) > start  # (test_baselines checks the size of the gain over 20 epochs)
    assert straight.history[-1]["nft_eta"] == pytest.approx(0.5)

    be2 = PointBackend(base)
    first = build_trainer(be2, MinusDistance(), ["x"], cfg.replace(epochs=2), callbacks=Callbacks(log=None))
    first.train()
    path = first.save_checkpoint(tmp_path / "ckpt.pt")
    be3 = PointBackend(base)
    second = build_trainer(be3, MinusDistance(), ["x"], cfg, callbacks=Callbacks(log=None))
    second.resume(path)
    second.train()
    for a, b in zip(_params(be), _params(be3)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(straight.old_policy_state(), second.old_policy_state()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resuming_a_checkpoint_of_another_method_is_refused(base, tmp_path):
    fdfo = build_trainer(PointBackend(base), MinusDistance(), ["x"], _cfg(method="fdfo", pairs_per_epoch=8),
                         callbacks=Callbacks(log=None))
    path = fdfo.save_checkpoint(tmp_path / "ckpt.pt")
    nft = build_trainer(PointBackend(base), MinusDistance(), ["x"], _cfg(), callbacks=Callbacks(log=None))
    with pytest.raises(Exception, match="method: 'fdfo' in the run, 'diffusion_nft' now"):
        nft.resume(path)
    # Even when the change is allowed, a checkpoint without a sampling policy cannot continue NFT.
    with pytest.raises(TrainingError, match="no DiffusionNFT sampling policy"):
        nft.resume(path, allow_change=True)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="CFG-free"):
        FDFOConfig(method="diffusion_nft", cfg_scale=4.5).validate()
    with pytest.raises(ConfigError, match="nft_beta"):
        FDFOConfig(method="diffusion_nft", nft_beta=0.0).validate()
    with pytest.raises(ConfigError, match="nft_group_size"):
        FDFOConfig(method="diffusion_nft", nft_group_size=1).validate()
    with pytest.raises(ConfigError, match="soft update"):
        FDFOConfig(method="diffusion_nft", nft_decay_max=1.5).validate()
    FDFOConfig(method="diffusion_nft").validate()
    FDFOConfig(method="fdfo", cfg_scale=4.5).validate()  # the NFT checks bind only its own method
