import pytest
import torch

from fdfo_core.methods import build_trainer, group_advantages, sde_mean, sde_step_std
from fdfo_core.methods.flow_grpo import gaussian_logprob
from fdfo_core.errors import ConfigError
from fdfo_core.config import FDFOConfig
from fdfo_core.run.hooks import Callbacks, TrainingError

from flow2d import MinusDistance, PointBackend, mean_reward, pretrain


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return pretrain(steps=1500)


def test_sde_step_reduces_to_euler_without_noise_and_keeps_the_marginal():
    x, v = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t, s = torch.full((3,), 0.6), torch.full((3,), 0.5)
    torch.testing.assert_close(sde_mean(x, v, t, s, torch.zeros(3)), x + (s - t).reshape(-1, 1, 1, 1) * v)
    # Flow-GRPO's SDE keeps the flow marginals up to its Euler-Maruyama error: for point data x0
    # (v = (x_t - x0) / t) a small step lands on mean (1 - s) x0 and std s.
    torch.manual_seed(0)
    n, x0 = 200_000, 0.7
    t, s = torch.full((n,), 0.6), torch.full((n,), 0.59)
    xt = ((1 - 0.6) * x0 + 0.6 * torch.randn(n)).reshape(n, 1, 1, 1)
    std = sde_step_std(t, s, 0.9, 0.7)
    mean = sde_mean(xt, (xt - x0) / 0.6, t, s, std)
    xs = mean + (std * torch.sqrt(t - s)).reshape(-1, 1, 1, 1) * torch.randn_like(xt)
    assert abs(float(xs.mean()) - 0.41 * x0) < 5e-3
    assert abs(float(xs.std()) - 0.59) < 5e-3


def test_std_at_t_one_uses_the_next_time():
    std = sde_step_std(torch.tensor([1.0, 0.5]), torch.tensor([0.9, 0.4]), 0.9, 0.7)
    torch.testing.assert_close(std, torch.tensor([0.7 * (1 / 0.1) ** 0.5, 0.7]))


def test_logprob_and_advantages():
    mean = torch.zeros(2, 1, 2, 2)
    lp_at_mean = gaussian_logprob(mean, mean, torch.tensor([0.5, 0.5]))
    lp_off = gaussian_logprob(mean + 0.3, mean, torch.tensor([0.5, 0.5]))
    assert torch.all(lp_at_mean > lp_off)
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0]), 3)
    torch.testing.assert_close(adv[:3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-3, rtol=0)
    assert torch.all(adv[3:] == 0)  # equal rewards in a group: no signal


@pytest.mark.parametrize("method,kw", [
    ("flow_grpo", dict(lr=3e-4, grpo_group_size=8, grpo_groups_per_epoch=64, optimizer_steps_per_epoch=2)),
    ("flow_grpo_fast", dict(lr=3e-4, grpo_group_size=8, grpo_groups_per_epoch=64, optimizer_steps_per_epoch=2)),
    ("diffusion_nft", dict(lr=1e-3, nft_group_size=8, nft_groups_per_epoch=64, optimizer_steps_per_epoch=2)),
    ("grad_copy", dict(lr=1e-4)),
    ("backprop_chain", dict(lr=1e-4)),
])
def test_every_baseline_improves_the_2d_reward(base, method, kw):
    be = PointBackend(base)
    start = mean_reward(be)
    cfg = FDFOConfig(method=method, pairs_per_epoch=256, num_steps=20, epochs=20, height=16, width=16,
                     train_batch_size=4096, sample_batch_size=256, decode_batch_size=512, checkpoint_every=0,
                     churn_strength=0.05, **kw)
    tr = build_trainer(be, MinusDistance(), ["x"], cfg, callbacks=Callbacks(log=None))
    tr.train()
    print(f"{method}: {start:.3f} -> {mean_reward(be):.3f}")
    assert mean_reward(be) > start + 0.01
    assert len(tr.history) == 20 and tr.history[-1]["images_seen"] > 0
    # The baselines share the loop, so they get the guardrails' held-out evaluation too.
    assert [ev.epoch for ev in tr.guardrails.evaluations] == [0, 5, 10, 15, 20]
    assert tr.guardrails.evaluations[-1].heldout_reward > tr.guardrails.evaluations[0].heldout_reward
    assert tr.history[-1]["heldout_reward"] is not None and tr.history[-1]["best_epoch"] is not None


class NotDifferentiable(MinusDistance):
    differentiable = False


def test_gradient_baselines_refuse_non_differentiable_rewards(base):
    for method in ("grad_copy", "backprop_chain"):
        cfg = FDFOConfig(method=method, pairs_per_epoch=8, num_steps=4, epochs=1, height=16, width=16, checkpoint_every=0)
        tr = build_trainer(PointBackend(base), NotDifferentiable(), ["x"], cfg, callbacks=Callbacks(log=None))
        with pytest.raises(TrainingError, match="differentiable reward"):
            tr.train_epoch()


def test_grpo_config_is_validated():
    with pytest.raises(ConfigError, match="grpo_group_size"):
        FDFOConfig(method="flow_grpo", grpo_group_size=1).validate()
    with pytest.raises(ConfigError, match="method must be one of"):
        FDFOConfig(method="ppo").validate()
