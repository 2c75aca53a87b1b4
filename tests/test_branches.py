"""Groups of branches (`branches`, issue 30): K = 2 is the paper's pair update to the last bit; K > 2
trains, resumes exactly, is part of the run definition and is refused with a pairwise reward."""

import pytest
import torch

from branches_reference import REFERENCE, pair_run_lora
from resume_check import stopped_and_resumed
from fdfo_core.config import ConfigError, FDFOConfig, load_config
from fdfo_core.flow.paired_sampler import ChurnSettings, sample_pairs
from fdfo_core.flow.schedules import flow_sigmas
from fdfo_core.methods import FDFOTrainer
from fdfo_core.methods.fdfo import refuse_groups_with_pairwise
from fdfo_core.methods.fdfo_objective import group_deltas, least_squares_deltas, pair_deltas
from fdfo_core.run.hooks import Callbacks, TrainingError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_two_branches_are_the_paper_update_bit_for_bit(tmp_path):
    """The LoRA after 2 epochs with branches = 2 (the default) equals, tensor by tensor, the one the
    code before groups of branches wrote (tests/branches_reference.py)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    reference = load_file(str(REFERENCE))
    with safe_open(str(REFERENCE), "pt") as f:
        written = f.metadata()
    same_platform = (written["torch"] == torch.__version__
                     and written["cpu_capability"] == torch.backends.cpu.get_cpu_capability())
    assert FDFOConfig().branches == 2
    state = pair_run_lora(tmp_path, branches=2)
    assert state.keys() == reference.keys()
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)  # it did train
    for k in state:
        if same_platform:
            assert torch.equal(state[k], reference[k]), k
        else:  # another torch build or CPU may round matrix products differently in the last bit
            torch.testing.assert_close(state[k], reference[k], rtol=1e-5, atol=1e-7)


def test_group_deltas_of_two_branches_are_pair_deltas():
    g = torch.Generator().manual_seed(0)
    rewards, final = torch.randn(6, generator=g), torch.randn(6, 4, 3, 3, generator=g)
    dr, dxn = group_deltas(rewards, final, 2)
    pr, pxn = pair_deltas(rewards, final)
    assert torch.equal(dr, pr) and torch.equal(dxn, pxn)
    # The general least-squares formula at K = 2 is the pair update (up to rounding).
    lr_, lxn = least_squares_deltas(rewards, final, 2)
    torch.testing.assert_close(lr_, pr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lxn, pxn, rtol=1e-4, atol=1e-5)


def test_group_estimate_recovers_a_linear_reward_on_the_span():
    """K = 4 branches around x0 in a 3-element latent span it: the estimate is the reward's gradient
    itself (in the mean inner product), and every branch's dR * dxn is that one estimate."""
    g = torch.Generator().manual_seed(1)
    k, b, n = 4, 5, 3
    w = torch.randn(b, n, generator=g)  # per group its own linear reward R = mean(w * x)
    # Branches at the corners of a randomly turned tetrahedron around each group's own x0.
    corners = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    turns = torch.linalg.qr(torch.randn(b, n, n, generator=g)).Q
    x = torch.randn(1, b, n, generator=g) + 0.1 * torch.einsum("kj,bij->kbi", corners, turns)
    rewards = (w[None] * x).mean(-1) + 7.0  # an offset changes nothing
    dr, dxn = group_deltas(rewards.reshape(-1), x.reshape(k * b, n, 1, 1), k)
    push = (dr[:, None] * dxn.reshape(k * b, n)).reshape(k, b, n)
    for j in range(k):
        torch.testing.assert_close(push[j], w, rtol=1e-3, atol=1e-3)
    # A higher-dimensional latent: the estimate fits every measured difference exactly.
    x = torch.randn(1, b, 50, generator=g) + torch.randn(k, b, 50, generator=g)
    rewards = torch.randn(k, b, generator=g)
    dr, dxn = group_deltas(rewards.reshape(-1), x.reshape(k * b, 50, 1, 1), k)
    est = dr[:b, None] * dxn[:b].reshape(b, 50)
    for i in range(k):
        for j in range(k):
            fitted = (est * (x[i] - x[j])).mean(-1)
            torch.testing.assert_close(fitted, rewards[i] - rewards[j], rtol=1e-3, atol=1e-4)
    # Equal rewards: no update.
    dr, dxn = group_deltas(torch.ones(k * b), x.reshape(k * b, 50, 1, 1), k)
    assert torch.all(dr == 0) and torch.all(dxn == 0)
    with pytest.raises(ValueError, match="at least 2"):
        group_deltas(torch.ones(3), torch.ones(3, 1, 1, 1), 1)


def test_sampler_groups_share_the_initial_noise():
    sigmas = flow_sigmas(4)

    def velocity(x, t, cond):
        return x * 0.5 + cond["c"].reshape(-1, 1, 1, 1)

    cond = {"c": torch.tensor([0.1, -0.2])}
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    pair = sample_pairs(velocity, cond, gens(), (2, 2, 2), sigmas, ChurnSettings(strength=0.1))
    pair2 = sample_pairs(velocity, cond, gens(), (2, 2, 2), sigmas, ChurnSettings(strength=0.1), branches=2)
    assert torch.equal(pair.final, pair2.final) and torch.equal(pair.states, pair2.states)
    group = sample_pairs(velocity, cond, gens(), (2, 2, 2), sigmas, ChurnSettings(strength=0.01), branches=4)
    assert group.final.shape == (8, 2, 2, 2) and group.states.shape == (8, 4, 2, 2, 2)
    first = group.states[:, 0].reshape(4, 2, -1)
    assert not torch.equal(first[0], first[1])  # prior churn differs per branch ...
    assert (first[0] - first[3]).abs().max() < 0.3 * first[0].abs().max()  # ... around one shared noise
    still = sample_pairs(velocity, cond, gens(), (2, 2, 2), sigmas, ChurnSettings(strength=0.0), branches=4)
    for j in range(1, 4):  # without churn the branches are one sample
        assert torch.equal(still.final[j * 2:(j + 1) * 2], still.final[:2])


def test_branches_config_is_checked():
    with pytest.raises(ConfigError, match="branches must be an integer >= 2"):
        FDFOConfig(branches=1).validate()
    with pytest.raises(ConfigError, match="Set pairs_per_epoch to 30 or 33"):
        FDFOConfig(pairs_per_epoch=32, branches=3).validate()
    cfg = FDFOConfig(pairs_per_epoch=32, branches=4).validate()
    assert cfg.groups_per_epoch == 16 and FDFOConfig().groups_per_epoch == FDFOConfig().pairs_per_epoch


def _tiny_trainer(tmp_path, run_dir, epochs, **over):
    from tiny_pipelines import tiny_sd3_pipeline

    from fdfo_core.backends.diffusers_backend import DiffusersBackend
    from fdfo_core.rewards import build_reward

    values = dict(epochs=epochs, pairs_per_epoch=4, num_steps=3, sample_batch_size=3, train_batch_size=8, lora_rank=2,
                  lora_alpha=4.0, checkpoint_every=2, lr=1e-2, optimizer_steps_per_epoch=2, eval_every=0, branches=4)
    values.update(over)
    cfg = load_config("toy", overrides=values)
    torch.manual_seed(1234)
    be = DiffusersBackend(tiny_sd3_pipeline(tmp_path), cfg, max_sequence_length=8)
    return FDFOTrainer(be, build_reward("brightness"), ["a red circle", "two blue squares"], cfg, run_dir=run_dir,
                       callbacks=Callbacks(log=None))


def test_groups_train_and_resume_exactly(tmp_path):
    full = _tiny_trainer(tmp_path, tmp_path / "full", epochs=3)
    m = full.train_epoch()
    assert m["pairs"] == 2 and m["images_seen"] == 8  # 2 groups of 4 = the 8 images of 4 pairs
    assert m["items"] == 8 * 3 and m["mean_abs_dR"] > 0
    full.train()
    second = stopped_and_resumed(lambda d, n: _tiny_trainer(tmp_path, d, epochs=n), tmp_path / "split", 2, 3)
    a, b = full.backend.adapter_state_dict(), second.backend.adapter_state_dict()
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["reward_mean"] for h in full.history] == [h["reward_mean"] for h in second.history]
    # The number of branches defines the run: another one is refused on resume.
    other = _tiny_trainer(tmp_path, tmp_path / "other", epochs=4, branches=2)
    with pytest.raises(TrainingError, match="branches"):
        other.resume(tmp_path / "split")


class _PairsOnly:
    pairwise = True
    name = "picks"

    def score_pairs(self, left, right, prompts, context):
        raise AssertionError("not reached")

    def describe(self):
        return "human_picks"


def test_groups_are_refused_with_a_pairwise_reward():
    refuse_groups_with_pairwise(_PairsOnly(), 2)  # pairs are fine
    with pytest.raises(TrainingError, match="cannot score groups of 4 branches: set branches to 2"):
        refuse_groups_with_pairwise(_PairsOnly(), 4)


def test_trainer_refuses_groups_with_a_pairwise_reward(flow2d_backend):
    cfg = FDFOConfig(pairs_per_epoch=4, num_steps=3, height=16, width=16, branches=4, eval_every=0)
    with pytest.raises(TrainingError, match="human_picks compares the two images of a pair"):
        FDFOTrainer(flow2d_backend, _PairsOnly(), ["x"], cfg, callbacks=Callbacks(log=None))


@pytest.fixture
def flow2d_backend():
    from flow2d import PointBackend, VelocityMLP

    torch.manual_seed(0)
    return PointBackend(VelocityMLP(8).eval().requires_grad_(False))
