"""Gradient checkpointing of ComfyUI blocks that update tensors in place (no ComfyUI needed)."""

import contextlib

import torch
from torch.utils.checkpoint import checkpoint

from fdfo_core.backends.gradient_checkpointing import CopyOnInplace


def _block(x, y, w, v, g):
    """Two streams updated in place after their inputs were saved (ComfyUI's Chroma double block)."""
    ln = lambda t: torch.nn.functional.layer_norm(t, t.shape[-1:])  # noqa: E731
    x, y = x.clone(), y.clone()
    a, b = ln(x) @ w, ln(y) @ v
    x.addcmul_(g, a)
    x.addcmul_(g, ln(x) @ w)
    y += g * b
    y[:, :2] = y[:, :2] * 2  # an item assignment on a saved tensor
    y.addcmul_(g, ln(y) @ v)
    return x, y


def _reference(x, y, w, v, g):
    ln = lambda t: torch.nn.functional.layer_norm(t, t.shape[-1:])  # noqa: E731
    a, b = ln(x) @ w, ln(y) @ v
    x = x + g * a
    x = x + g * (ln(x) @ w)
    y = y + g * b
    y = torch.cat([y[:, :2] * 2, y[:, 2:]], dim=1)
    return x, y + g * (ln(y) @ v)


def test_recomputation_under_copy_on_inplace_gives_the_true_gradient():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 8, generator=g), torch.randn(3, 8, generator=g)
    gate = torch.randn(1, 8, generator=g)

    def grads(run):
        w = torch.randn(8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
        v = torch.randn(8, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
        a, b = run(x, y, w, v, gate)
        (a.sum() + (b ** 2).sum()).backward()
        return torch.cat([w.grad.flatten(), v.grad.flatten()])

    true = grads(_reference)
    plain = grads(lambda *a: checkpoint(_block, *a, use_reentrant=False))
    fixed = grads(lambda *a: checkpoint(_block, *a, use_reentrant=False,
                                        context_fn=lambda: (contextlib.nullcontext(), CopyOnInplace())))
    assert (plain - true).abs().max() > 1e-3  # torch alone recomputes from updated tensors
    assert (fixed - true).abs().max() < 1e-4 * true.abs().max()


def test_checkpointing_with_copy_on_inplace_keeps_no_activations():
    """The point of checkpointing: a block's activations are freed after its forward. (Saved-tensor
    hooks installed inside the checkpointed function would take over from checkpoint's own and keep
    every activation: the reason the fix lives in the recompute context instead.)"""
    import gc
    import weakref

    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    refs = []

    def block(x):
        h = x
        for _ in range(4):
            h = torch.tanh(h @ w)
            refs.append(weakref.ref(h))
        return h * 1.0

    def alive(run):
        refs.clear()
        out = run(torch.randn(8, 32))
        gc.collect()
        n = sum(r() is not None for r in refs)
        out.sum().backward()
        return n

    def inner_hooks(x):
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            return block(x)

    fixed = alive(lambda x: checkpoint(block, x, use_reentrant=False,
                                       context_fn=lambda: (contextlib.nullcontext(), CopyOnInplace())))
    assert fixed == 0
    assert alive(lambda x: checkpoint(inner_hooks, x, use_reentrant=False)) >= 3  # what not to do
    assert alive(block) >= 3  # no checkpointing
