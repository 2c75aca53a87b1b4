"""The byte-bounded prompt conditioning cache (fdfo_core.backends.prompt_cache) and the diffusers backend's
per-prompt state. The ComfyUI backend's use of the cache (a fake CLIP of the true SD3 / Flux
shapes, training identical to an unbounded cache) is checked inside ComfyUI:
tests/comfy_scripts/nodes_in_comfyui.py, `prompt_cache_*` checks."""

import torch

from fdfo_core.backends.prompt_cache import DEFAULT_PROMPT_CACHE_BYTES, MB, PromptCache, compact, tensor_bytes

# The conditioning ComfyUI's text encoders return (float32): SD3 / SD3.5 concatenate CLIP-L+G
# (77 tokens) and T5 (at least 77 tokens) into [1, 154, 4096] with a [1, 2048] pooled vector; Flux
# pads T5 to 256 tokens, [1, 256, 4096], with CLIP-L's [1, 768] pooled vector.
SD3_SHAPES = {"c_crossattn": (1, 154, 4096), "y": (1, 2048)}
FLUX_SHAPES = {"c_crossattn": (1, 256, 4096), "y": (1, 768), "guidance": (1,)}


def fake_entry(shapes, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}


def entry_bytes(shapes, itemsize=4):
    return sum(itemsize * torch.Size(s).numel() for s in shapes.values())


def test_default_bound_is_two_gigabytes():
    assert DEFAULT_PROMPT_CACHE_BYTES == 2 * 1024**3
    assert PromptCache().max_bytes == DEFAULT_PROMPT_CACHE_BYTES


def test_tensor_bytes_counts_real_storages_once():
    big = torch.zeros(1000)
    assert tensor_bytes(big) == 4000
    assert tensor_bytes({"a": big[:10]}) == 4000  # a view keeps the whole storage alive
    assert tensor_bytes([big, big[5:], (big,)]) == 4000  # one storage, counted once
    assert tensor_bytes({"a": torch.zeros(3, dtype=torch.bfloat16), "b": [torch.zeros(2, dtype=torch.int64)]}) == 6 + 16

    class Entry:
        def __init__(self):
            self.tensors = {"x": torch.zeros(4, 4)}
            self.constants = {"n": 3}

    assert tensor_bytes(Entry()) == 64


def test_compact_drops_the_parent_storage_and_casts_floats_only():
    parent = torch.randn(100, 4096)
    view = parent[:2]
    c = compact(view)
    assert torch.equal(c, view) and tensor_bytes(c) == 2 * 4096 * 4
    b = compact(view, torch.bfloat16)
    assert b.dtype == torch.bfloat16 and torch.equal(b, view.to(torch.bfloat16))
    ids = compact(torch.arange(5), torch.bfloat16)
    assert ids.dtype == torch.int64


def test_lru_order_and_bound():
    cache = PromptCache(max_bytes=3 * 400, size_of=lambda v: 400)
    for k in "abc":
        cache.put(k, k)
    assert cache.get("a") == "a"  # a is now the most recently used
    cache.put("d", "d")
    assert "b" not in cache and set("acd") <= {k for k in "abcd" if k in cache}
    assert cache.evictions == 1 and cache.bytes == 1200 and len(cache) == 3
    assert cache.get("b") is None and cache.misses == 1


def test_an_entry_larger_than_the_bound_is_returned_but_not_kept():
    cache = PromptCache(max_bytes=100)
    cache.put("small", torch.zeros(2))
    big = {"x": torch.zeros(1000)}
    assert cache.put("big", big) is big
    assert "big" not in cache and "small" in cache and cache.bytes == 8


def test_reputting_a_key_replaces_its_size():
    cache = PromptCache(max_bytes=None)
    cache.put("a", torch.zeros(10))
    cache.put("a", torch.zeros(20))
    assert cache.bytes == 80 and len(cache) == 1


def test_unbounded_cache_never_evicts():
    cache = PromptCache(max_bytes=None, size_of=lambda v: 10**9)
    for i in range(50):
        cache.put(i, i)
    assert len(cache) == 50 and cache.evictions == 0 and cache.first_eviction_note() is None


def test_true_sd3_and_flux_conditioning_stays_under_the_byte_bound():
    """Many distinct prompts of the true SD3 and Flux conditioning shapes (2.5 MB / 4.2 MB each
    in float32): the cache never holds more than its bound, and holds as many as fit."""
    bound = 48 * MB
    for shapes in (SD3_SHAPES, FLUX_SHAPES):
        per_entry = entry_bytes(shapes)
        cache = PromptCache(max_bytes=bound)
        for i in range(120):
            cache.put(f"prompt {i}", fake_entry(shapes, i))
            assert cache.bytes <= bound
            assert cache.bytes == sum(per_entry for _ in range(len(cache)))
        assert len(cache) == bound // per_entry
        assert cache.peak_bytes <= bound
        assert cache.evictions == 120 - len(cache)
        # The newest prompts are the ones kept.
        assert all(f"prompt {i}" in cache for i in range(120 - len(cache), 120))
    assert entry_bytes(SD3_SHAPES) == 154 * 4096 * 4 + 2048 * 4  # 2.5 MB
    assert entry_bytes(FLUX_SHAPES) == 256 * 4096 * 4 + 768 * 4 + 4  # 4.2 MB


def test_bf16_storage_halves_the_entries():
    cache = PromptCache(max_bytes=48 * MB)
    for i in range(120):
        cache.put(i, {k: compact(v, torch.bfloat16) for k, v in fake_entry(SD3_SHAPES, i).items()})
    assert len(cache) == (48 * MB) // entry_bytes(SD3_SHAPES, itemsize=2)
    assert cache.bytes <= 48 * MB


def test_first_eviction_is_reported_once_with_what_the_cache_holds():
    cache = PromptCache(max_bytes=10 * MB, size_of=lambda v: 4 * MB)
    cache.put(1, 1)
    cache.put(2, 2)
    assert cache.first_eviction_note() is None
    cache.put(3, 3)
    note = cache.first_eviction_note()
    assert note is not None and "2 prompts" in note and "8.0 MB" in note and "bound 10 MB" in note
    cache.put(4, 4)
    assert cache.first_eviction_note() is None


def _held_state(backend):
    """Size of every attribute of the backend that is not a model: tensors (bytes) and
    containers (lengths)."""
    out = {}
    for k, v in vars(backend).items():
        if isinstance(v, torch.nn.Module) or k in ("pipe",):
            continue
        out[k] = (tensor_bytes(v), len(v) if hasattr(v, "__len__") and not isinstance(v, (str, torch.Tensor)) else None)
    return out


def test_diffusers_backend_keeps_no_per_prompt_state(tmp_path, one_thread):
    """The diffusers backend encodes each epoch's prompts when the epoch needs them; nothing
    per prompt stays on the backend, so memory does not grow with the prompt list."""
    from test_diffusers_backend import make_backend

    backend = make_backend("sd3", tmp_path)
    before = _held_state(backend)
    cond = backend.encode_prompts([f"a red circle number {i}" for i in range(24)])
    assert cond["prompt_embeds"].shape[0] == 24
    del cond
    backend.encode_prompts([f"two blue squares number {i}" for i in range(24)])
    assert _held_state(backend) == before
