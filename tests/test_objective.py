import torch

from fdfo_core.flow.objective import fdfo_loss, pair_deltas, v_target


def test_pair_deltas_follow_the_spec():
    r = torch.tensor([1.0, 5.0, 0.0, 2.0])  # pairs (1, 0) and (5, 2)
    x = torch.randn(4, 2, 3, 3)
    dr, dxn = pair_deltas(r, x)
    torch.testing.assert_close(dr, torch.tensor([0.5, 1.5, -0.5, -1.5]))
    dx = (x[:2] - x[2:]) / 2
    expect = dx / (dx.pow(2).mean(dim=(1, 2, 3), keepdim=True) + 1e-6)
    torch.testing.assert_close(dxn[:2], expect)
    torch.testing.assert_close(dxn[2:], -expect)


def test_ratio_is_one_at_the_recorded_velocity_and_the_gradient_points_along_minus_dr_dxn():
    torch.manual_seed(0)
    v_rec = torch.randn(3, 4, 2, 2)
    dxn = torch.randn(3, 4, 2, 2) * 10
    dr = torch.tensor([0.3, -0.2, 0.0])
    v = v_rec.clone().requires_grad_(True)
    out = fdfo_loss(v, v_rec, dxn, dr, clip_range=0.03)
    assert torch.equal(out.ratio, torch.ones(3))
    out.loss.sum().backward()
    n = v[0].numel()
    # d loss / d v = dR * dL/dv = dR * 2 (v - v_target) / n = 2 dR dxn / n at v = v_recorded.
    torch.testing.assert_close(v.grad, 2 * dr.reshape(-1, 1, 1, 1) * dxn / n)


def test_equal_rewards_give_no_update():
    torch.manual_seed(1)
    final = torch.randn(4, 2, 3, 3)
    dr, dxn = pair_deltas(torch.tensor([2.0, 3.0, 2.0, 3.0]), final)
    v_rec = torch.randn(4, 2, 3, 3)
    v = (v_rec + 0.01 * torch.randn_like(v_rec)).requires_grad_(True)
    fdfo_loss(v, v_rec, dxn, dr).loss.sum().backward()
    assert torch.all(v.grad == 0)


def test_stable_log_ratio_equals_the_definition():
    torch.manual_seed(2)
    v_rec = torch.randn(5, 8, 4, 4, dtype=torch.float64)
    dxn = torch.randn_like(v_rec) * 300  # close branches: dxn is large
    v = v_rec + 1e-4 * torch.randn_like(v_rec)
    out = fdfo_loss(v, v_rec, dxn, torch.ones(5))
    target = v_target(v_rec, dxn)
    L = (v - target).pow(2).mean(dim=(1, 2, 3))
    L_ref = dxn.pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.ratio.double(), torch.exp(L_ref - L), rtol=1e-5, atol=0)


def test_trust_region_optimum_is_at_one_plus_clip_range():
    # Moving v along -sign(dR) * dxn raises the ratio; the surrogate is minimised near 1 + clip_range.
    v_rec = torch.zeros(1, 1, 4, 4)
    dxn = torch.ones(1, 1, 4, 4)
    best = None
    for a in torch.linspace(0, 0.05, 501):
        v = v_rec - a * dxn
        out = fdfo_loss(v, v_rec, dxn, torch.tensor([1.0]), clip_range=0.03)
        if best is None or out.loss < best[0]:
            best = (out.loss.item(), out.ratio.item())
    assert abs(best[1] - 1.03) < 2e-3
    out = fdfo_loss(v_rec - 0.04 * dxn, v_rec, dxn, torch.tensor([1.0]), clip_range=0.03)
    assert bool(out.clipped.all())


def test_kl_term_pulls_toward_the_base_velocity():
    v_rec = torch.zeros(2, 1, 2, 2)
    v_base = torch.zeros(2, 1, 2, 2)
    v = torch.full((2, 1, 2, 2), 0.5, requires_grad=True)
    out = fdfo_loss(v, v_rec, torch.zeros_like(v_rec), torch.zeros(2), v_base=v_base, kl_weight=2.0)
    torch.testing.assert_close(out.kl, torch.full((2,), 0.25))
    out.loss.sum().backward()
    torch.testing.assert_close(v.grad, torch.full_like(v, 2.0 * 2 * 0.5 / 4))


def test_finite_difference_direction_ascends_a_differentiable_reward():
    # R(x) = -|x - target|^2; pairs around random points: sum_i dR_i dx_i has positive cosine
    # with the true gradient, and the cosine grows with the number of pairs.
    torch.manual_seed(3)
    target = torch.randn(1, 4, 8, 8)

    def reward(x):
        return -(x - target).pow(2).flatten(1).sum(1)

    centre = torch.randn(1, 4, 8, 8)
    true_grad = (-2 * (centre - target)).flatten()
    cosines = []
    for pairs in (16, 256):
        base = centre.expand(pairs, -1, -1, -1)
        xa = base + 0.01 * torch.randn_like(base)
        xb = base + 0.01 * torch.randn_like(base)
        final = torch.cat([xa, xb])
        dr, dxn = pair_deltas(reward(final), final)
        est = (dr[:pairs].reshape(-1, 1, 1, 1) * dxn[:pairs]).sum(0).flatten()
        cosines.append(float(torch.nn.functional.cosine_similarity(est, true_grad, dim=0)))
    assert cosines[0] > 0.1
    assert cosines[1] > cosines[0] and cosines[1] > 0.6
