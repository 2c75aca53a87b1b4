import os
import sys

import pytest
import torch

from fdfo_core.flow.schedules import (
    churn_strengths,
    exponential_time_shift,
    flow_sigmas,
    flux_mu,
    time_shift,
)


def test_shift_one_is_identity_and_monotonic():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.equal(time_shift(t, 1.0), t)
    for shift in (0.5, 3.0, 7.0):
        s = time_shift(t, shift)
        assert s[0] == 0 and s[-1] == 1
        assert bool((s[1:] > s[:-1]).all())
    with pytest.raises(ValueError):
        time_shift(t, 0.0)


@pytest.mark.parametrize("steps", [1, 10, 28, 40])
def test_sd3_grid_matches_diffusers_scheduler(steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)
    ours = flow_sigmas(steps, shift=3.0)
    assert ours.shape == (steps + 1,)
    assert ours[-1] == 0
    torch.testing.assert_close(ours, sched.sigmas.float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("steps,seq_len", [(4, 16), (28, 4096), (50, 1024)])
def test_flux_grid_matches_diffusers_dynamic_shift(steps, seq_len):
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    mu = flux_mu(seq_len)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    torch.testing.assert_close(flow_sigmas(steps, mu=mu), sched.sigmas.float(), atol=1e-6, rtol=0)


def test_exponential_shift_keeps_endpoints():
    t = torch.tensor([0.0, 0.5, 1.0])
    s = exponential_time_shift(t, 1.15)
    assert s[0] == 0 and s[2] == 1 and s[1] > 0.5


def test_shift_matches_comfyui_time_snr_shift():
    root = os.environ.get("COMFYUI_ROOT")
    if not root:
        pytest.skip("set COMFYUI_ROOT to a ComfyUI checkout to cross-check against comfy.model_sampling")
    sys.path.insert(0, root)
    try:
        from comfy.model_sampling import time_snr_shift
    except Exception as e:  # pragma: no cover - depends on the ComfyUI environment
        pytest.skip(f"comfy.model_sampling does not import in this environment: {e}")
    t = torch.linspace(0, 1, 17)
    for shift in (1.0, 3.0, 6.0):
        torch.testing.assert_close(time_shift(t, shift), time_snr_shift(shift, t), atol=1e-7, rtol=0)


def test_raw_churn_is_constant_with_final_step_zero():
    sig = flow_sigmas(10, shift=3.0)
    prior, g = churn_strengths("raw", sig, 0.0025)
    assert prior == 0.0025
    assert g.shape == (10,)
    assert torch.all(g[:-1] == 0.0025) and g[-1] == 0


def test_prior_churn_only_at_prior():
    prior, g = churn_strengths("prior", flow_sigmas(10), 0.01)
    assert prior == 0.01 and torch.all(g == 0)


def test_interval_churn_peaks_at_one_random_time():
    sig = flow_sigmas(40)
    peaks = []
    for seed in range(20):
        prior, g = churn_strengths("interval", sig, 0.1, generator=torch.Generator().manual_seed(seed))
        assert prior == 0 and g[-1] == 0
        assert g.max() <= 0.1 + 1e-7 and g.min() >= 0
        peaks.append(int(g.argmax()))
    # The centre is random: different seeds put the bump at different steps.
    assert len(set(peaks)) > 5
    with pytest.raises(ValueError, match="unknown churn schedule"):
        churn_strengths("bogus", sig, 0.1)
