"""The shared per-family checks (diffusers side, project venv); see tests/test_families.py.

Every function takes a `family_cases.FamilyCase` and a temporary folder, builds the case's tiny
pipeline and returns figures; the tests assert on them. The ComfyUI half lives in
tests/comfy_scripts/families_in_comfyui.py and exchanges files with `prepare_comfy_inputs` /
`check_comfy_lora_in_diffusers`.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fdfo_core.backends.diffusers_backend import ADAPTER, DiffusersBackend, load_lora_into_pipeline, lora_to_diffusers_state_dict
from fdfo_core.config import load_config
from fdfo_core.families import LoraMap, LoraModule, get_family
from fdfo_core.families.common import pack_2x2, unpack_2x2  # noqa: F401  (for family-specific tests)
from fdfo_core.backends.generation import generate_images
from fdfo_core.backends.lora_files import fuse_lora, load_lora, save_lora
from fdfo_core.rewards import build_reward
from fdfo_core.run.hooks import Callbacks
from fdfo_core.methods import FDFOTrainer

PROMPTS = ["a red circle", "two blue squares", "a green triangle"]


def tiny_config(case, **over):
    values = dict(epochs=1, pairs_per_epoch=4, num_steps=4, sample_batch_size=4, train_batch_size=32,
                  lora_rank=4, lora_alpha=8.0, checkpoint_every=0, lr=1e-2, height=case.size, width=case.size)
    values.update(over)
    return load_config("toy", overrides=values)


def make_backend(case, tmp: Path, seed: int = 0, add_adapter: bool = True, pipeline=None,
                 max_sequence_length: int | None = None, **over) -> DiffusersBackend:
    pipe = (pipeline or case.pipeline)(tmp, seed)
    return DiffusersBackend(pipe, tiny_config(case, **over), add_adapter=add_adapter,
                            max_sequence_length=case.max_sequence_length if max_sequence_length is None else max_sequence_length)


def perturb_lora(backend, seed: int = 0, std: float = 0.3) -> None:
    """Random LoRA factors: every row of every up matrix nonzero, so a misplaced slice shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backend.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def probe(backend, seed: int = 3, prompts=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Latents, flow times and conditioning for velocity comparisons (one row per prompt of
    `prompts`, default PROMPTS; three)."""
    prompts = list(prompts or PROMPTS)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(prompts), *backend.latent_shape(backend.config.height, backend.config.width), generator=g)
    t = torch.tensor([0.9, 0.5, 0.1])
    return x, t, backend.encode_prompts(prompts)


def flux_img_ids(h: int, w: int) -> torch.Tensor:
    """Flux-style RoPE ids (0, row, col) of the 2x2 patches of an h x w latent."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# --- checks ----------------------------------------------------------------------------------------


def check_matches_pipeline(case, tmp: Path, num_steps: int = 4, cfg_scale: float = 1.0) -> dict[str, float]:
    """The family's latent layout, time grid, prompt encoding, velocity call and decoding against the
    diffusers pipeline's own __call__ (same seeds, no CFG, or true CFG `cfg_scale` with an empty
    negative prompt as `case.cfg_kwargs` spells it): the images must agree."""
    backend = make_backend(case, tmp, add_adapter=False)
    pipe, seeds = backend.pipe, [11, 12]
    ours = generate_images(backend, PROMPTS[:2], seeds, num_steps, case.size, case.size, cfg_scale=cfg_scale)
    kwargs = dict(prompt=PROMPTS[:2], num_inference_steps=num_steps, height=case.size, width=case.size,
                  generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt")
    if "max_sequence_length" in inspect.signature(pipe.__call__).parameters:  # (HunyuanImage: an attribute)
        kwargs["max_sequence_length"] = case.max_sequence_length
    kwargs.update(case.pipeline_kwargs(backend.options))
    if cfg_scale != 1.0:
        kwargs.update(case.cfg_kwargs(cfg_scale))
    with torch.no_grad():
        theirs = case.pipeline_images(pipe(**kwargs)).float().clamp(0, 1)
    return {"max_diff": float((ours - theirs).abs().max()), "spread": float(theirs.std()), "images": ours}


def check_lora_round_trip(case, tmp: Path) -> dict[str, Any]:
    """A LoRA file saved by the trainer loads into a fresh pipeline (diffusers' own loader, and an
    explicit merge W + B A of the file's factors into the base weights) with identical velocities."""
    backend = make_backend(case, tmp)
    perturb_lora(backend)
    trainer = FDFOTrainer(backend, build_reward("brightness"), PROMPTS, backend.config, callbacks=Callbacks(log=None))
    path = trainer.save_lora(tmp / "lora.safetensors")
    tensors, meta = load_lora(path)
    x, t, cond = probe(backend)
    with torch.no_grad():
        v_hot = backend.velocity(x, t, cond)
        with backend.adapter_disabled():
            v_base = backend.velocity(x, t, cond)

    loaded = make_backend(case, tmp, add_adapter=False)
    load_lora_into_pipeline(loaded.pipe, path)
    merged = make_backend(case, tmp, add_adapter=False)
    sd = lora_to_diffusers_state_dict(merged.pipe, path)  # scale folded into B
    with torch.no_grad():
        for key, a in sd.items():
            if key.endswith(".lora_A.weight"):
                module = key[len("transformer."):-len(".lora_A.weight")]
                b = sd[key.replace(".lora_A.", ".lora_B.")]
                merged.transformer.get_submodule(module).weight.add_(b @ a)
        v_loaded = loaded.velocity(x, t, cond)
        v_merged = merged.velocity(x, t, cond)
    return {
        "family": meta["base_model_family"], "keys": sorted(tensors), "alphas": sum(k.endswith(".alpha") for k in tensors),
        "lora_effect": relative(v_hot, v_base), "loaded_vs_hot": relative(v_loaded, v_hot),
        "merged_vs_hot": relative(v_merged, v_hot), "lora_modules": len(list(backend.lora_layers())),
    }


def check_both_directions_agree(case, tmp: Path) -> dict[str, Any]:
    """The family's LoRA map read both ways: the ComfyUI plan for the linears the diffusers modules
    fuse into selects exactly the peft-adapted projections, at the same rows."""
    backend = make_backend(case, tmp)
    family = backend.model_family
    from_diffusers, linears = set(), {}
    for name, layer in backend.lora_layers():
        part = family.lora_map.to_comfy(name, backend._out_features)
        from_diffusers.add((name, part.comfy_module, part.offset, part.rows))
        linears[part.comfy_module] = (layer.base_layer.in_features, part.fused_rows)
    plan = family.comfy_lora_plan(linears, backend.lora_targets)
    from_comfy = {(p.name, p.comfy_module, p.offset, p.rows) for p in plan}
    return {"diffusers_only": sorted(from_diffusers - from_comfy), "comfy_only": sorted(from_comfy - from_diffusers),
            "parts": len(from_diffusers)}


def check_training(case, tmp: Path) -> dict[str, float]:
    """A few FDFO epochs with mean brightness as the reward make held-out images brighter."""
    over = dict(epochs=8, pairs_per_epoch=32, num_steps=8, sample_batch_size=16, churn_strength=0.02,
                lora_rank=8, lora_alpha=16.0)
    over.update(case.train_overrides)
    backend = make_backend(case, tmp, pipeline=case.train_pipeline, max_sequence_length=case.train_max_sequence_length,
                           **over)
    cfg, reward = backend.config, build_reward("brightness")
    prompts = [PROMPTS[i % 3] for i in range(32)]
    seeds = list(range(10_000, 10_032))  # never used in training (pair noise comes from derived seeds)

    def held_out():
        with torch.no_grad():
            return reward(generate_images(backend, prompts, seeds, cfg.num_steps, cfg.height, cfg.width), prompts)

    before = held_out()
    FDFOTrainer(backend, reward, PROMPTS, cfg, callbacks=Callbacks(log=None)).train()
    diff = held_out() - before
    return {"before": float(before.mean()), "gain": float(diff.mean()),
            "t_stat": float(diff.mean() / (diff.std() / len(diff) ** 0.5))}


# --- the ComfyUI half: files both interpreters read ------------------------------------------------


def corrupted_map(lora_map: LoraMap) -> LoraMap:
    """A plausible wrong mapping the ComfyUI checks must catch: each fused module's parts rotated
    (q -> k -> v -> q); a family without fused modules gets its modules' ComfyUI targets rotated
    instead (to_q written as to_k, ...)."""
    modules = list(lora_map.modules)
    if any(len(m.diffusers) > 1 for m in modules):
        return LoraMap(tuple(LoraModule(m.comfy, m.diffusers[1:] + m.diffusers[:1], m.split) if len(m.diffusers) > 1 else m
                             for m in modules))
    return LoraMap(tuple(LoraModule(modules[(i + 1) % len(modules)].comfy, m.diffusers, m.split)
                         for i, m in enumerate(modules)))


def make_comfy_side_backend(case, tmp: Path, add_adapter: bool = True) -> DiffusersBackend:
    """The diffusers backend the ComfyUI half compares against: the case's `comfy_pipeline` and
    `comfy_max_sequence_length` where it sets them."""
    return make_backend(case, tmp, add_adapter=add_adapter, pipeline=case.comfy_pipeline,
                        max_sequence_length=case.comfy_max_sequence_length)


def prepare_comfy_inputs(case, folder: Path) -> None:
    """Write what the ComfyUI script needs for `case`: diffusers base weights and config, a LoRA
    file from the diffusers backend (and one written with a corrupted map), probe inputs, the
    ComfyUI conditioning of each prompt and the diffusers velocities."""
    folder.mkdir(parents=True, exist_ok=True)
    backend = make_comfy_side_backend(case, folder, add_adapter=False)
    save_file({k: v.contiguous() for k, v in backend.transformer.state_dict().items()}, str(folder / "transformer.safetensors"))
    (folder / "config.json").write_text(json.dumps({k: v for k, v in dict(backend.transformer.config).items()
                                                    if not k.startswith("_")}, default=list))
    backend = make_comfy_side_backend(case, folder)
    perturb_lora(backend)
    trainer = FDFOTrainer(backend, build_reward("brightness"), PROMPTS, backend.config, callbacks=Callbacks(log=None))
    trainer.save_lora(folder / "diffusers_lora.safetensors")
    family = get_family(case.family)
    factors = {n: (m.lora_A[ADAPTER].weight.detach(), m.lora_B[ADAPTER].weight.detach()) for n, m in backend.lora_layers()}
    scale = next(m.scaling[ADAPTER] for _, m in backend.lora_layers())
    wrong = copy.copy(family)
    wrong.lora_map = corrupted_map(family.lora_map)
    save_lora(folder / "wrong_map_lora.safetensors", fuse_lora(wrong, factors, scale, backend._out_features),
              {"base_model_family": family.name})
    prompts = list(case.comfy_prompts or PROMPTS)
    x, t, cond = probe(backend, prompts=prompts)
    with torch.no_grad():
        v_hot = backend.velocity(x, t, cond)
        with backend.adapter_disabled():
            v_base = backend.velocity(x, t, cond)
    # Gradients of a fixed linear function of the hot velocity, for the ComfyUI backend's backward.
    w = torch.randn(v_hot.shape, generator=torch.Generator().manual_seed(5))
    backend.velocity(x, t, cond).mul(w).sum().backward()
    # (a projection whose output is never used, e.g. the last block's text output, has no gradient: zero)
    grads = {n.replace(f".{ADAPTER}.weight", ""): torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
             for n, p in backend._params.items()}
    rows = [case.comfy_conditioning({k: v[i:i + 1] for k, v in cond.items()}) for i in range(len(prompts))]
    torch.save({"prompts": prompts, "x": x, "t": t, "conditioning": rows, "v_hot": v_hot, "v_base": v_base,
                "lora_rank": backend.config.lora_rank, "lora_alpha": backend.config.lora_alpha,
                "size": case.size, "guidance": backend.options.guidance, "factors": factors, "w": w,
                "grads": grads}, folder / "inputs.pt")


def check_comfy_lora_in_diffusers(case, folder: Path) -> dict[str, float]:
    """The LoRA the ComfyUI backend wrote (comfy_lora.safetensors, with its hot velocity in
    comfy_velocity.pt) gives the same velocity in a diffusers pipeline."""
    backend = make_comfy_side_backend(case, folder, add_adapter=False)
    load_lora_into_pipeline(backend.pipe, folder / "comfy_lora.safetensors")
    data = torch.load(folder / "inputs.pt", weights_only=False)
    comfy = torch.load(folder / "comfy_velocity.pt", weights_only=False)
    cond = backend.encode_prompts(data["prompts"])
    with torch.no_grad():
        v = backend.velocity(data["x"], data["t"], cond)
    return {"diff": relative(v, comfy["v_hot"]), "lora_effect": relative(comfy["v_hot"], data["v_base"])}


def check_gradient_checkpointing(case, tmp: Path) -> dict[str, float]:
    """LoRA gradients of a fixed linear function of the velocity, with and without the
    transformer's gradient checkpointing (config.gradient_checkpointing), from the same LoRA."""
    grads = []
    for checkpointing in (False, True):
        backend = make_backend(case, tmp, gradient_checkpointing=checkpointing)
        perturb_lora(backend)
        x, t, cond = probe(backend)
        w = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        backend.velocity(x, t, cond).mul(w).sum().backward()
        grads.append(torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.flatten()
                                for p in backend.trainable_parameters()]))
    plain, checkpointed = grads
    return {"diff": relative(checkpointed, plain), "norm": float(plain.norm())}


def check_memory_modes(case, tmp: Path) -> dict[str, Any]:
    """Every memory mode of the diffusers backend on this family, one velocity and one LoRA
    gradient each, against the default mode (same pipeline seed, same LoRA):

    - fp8 base weights, with offload (text encoders / VAE leave the device between phases; on a
      CPU the code path only) and recorded states on the CPU (`base_weights fp8`): runs (a module the model declares precision-sensitive
      cast to fp8 fails here with a dtype mismatch), stores the LoRA targets in fp8 and every
      module the model class lists in `_skip_layerwise_casting_patterns` in its own dtype, and
      moves the velocity by fp8 rounding only (`fp8_diff`);
    - fp8 under gradient checkpointing: the same gradients as fp8 alone (`fp8_ckpt_diff`).
    """
    import re

    from fdfo_core.backends.fp8 import FP8_DTYPE, fp8_skip_patterns

    def run(backend, perturb=True):
        if perturb:
            perturb_lora(backend)
        x, t, cond = probe(backend)
        w = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        v = backend.velocity(x, t, cond)
        v.mul(w).sum().backward()
        grad = torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.flatten()
                          for p in backend.trainable_parameters()])
        for p in backend.trainable_parameters():
            p.grad = None
        return v.detach(), grad

    pipeline = case.train_pipeline or case.pipeline  # (the narrower one where a case has it: Chroma's 1 + 1 blocks)
    v0, g0 = run(make_backend(case, tmp / "default", pipeline=pipeline))
    fp8 = DiffusersBackend(pipeline(tmp / "fp8", 0), tiny_config(case, base_weights="fp8", storage_device="cpu"),
                           max_sequence_length=case.max_sequence_length, offload=True)
    v8, g8 = run(fp8)
    fp8_ckpt = DiffusersBackend(pipeline(tmp / "fp8-ckpt", 0),
                                tiny_config(case, base_weights="fp8", gradient_checkpointing=True),
                                max_sequence_length=case.max_sequence_length)
    _, g8c = run(fp8_ckpt)
    declared = tuple(getattr(fp8.transformer, "_skip_layerwise_casting_patterns", None) or ())
    stored = {n: m.weight.dtype for n, m in fp8.transformer.named_modules()
              if isinstance(getattr(m, "weight", None), torch.Tensor) and "lora_" not in n}
    skip = fp8_skip_patterns(fp8.transformer)
    lora_bases = [n for n, _ in fp8.lora_layers()]
    return {
        "checkpointing_on": bool(fp8_ckpt.transformer.is_gradient_checkpointing),
        "fp8_diff": float((v8 - v0).norm() / v0.norm()), "fp8_finite": bool(torch.isfinite(v8).all() and torch.isfinite(g8).all()),
        "fp8_grad_norm": float(g8.norm()), "fp8_ckpt_diff": relative(g8c, g8),
        "declared": declared,
        "declared_in_fp8": sorted(n for n, d in stored.items() if d == FP8_DTYPE
                                  and any(re.search(p, n) for p in declared)),
        # every LoRA target's frozen weight is fp8, except in modules the skip list keeps
        "lora_targets_in_fp8": all((fp8.transformer.get_submodule(n).base_layer.weight.dtype == FP8_DTYPE)
                                   != any(re.search(p, n) for p in skip) for n in lora_bases),
        "lora_targets_fp8_count": sum(fp8.transformer.get_submodule(n).base_layer.weight.dtype == FP8_DTYPE
                                      for n in lora_bases),
    }


def check_bf16_velocity(case, tmp: Path) -> dict[str, float]:
    """The velocity call with the transformer in bf16 (as on CUDA) agrees with fp32 to bf16 accuracy."""
    backend = make_backend(case, tmp, add_adapter=False)
    x, t, cond = probe(backend)
    with torch.no_grad():
        v32 = backend.velocity(x, t, cond)
        backend.transformer.to(torch.bfloat16)
        backend.model_dtype = torch.bfloat16
        v16 = backend.velocity(x, t, {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in cond.items()})
    return {"diff": relative(v16, v32), "finite": bool(torch.isfinite(v16).all())}


def check_saved_folder_loads(case, tmp: Path) -> dict[str, Any]:
    """The case's pipeline saved as a model folder loads through `build_backend` (what `fdfo train
    --model <folder>` does) and gives the in-memory pipeline's velocity."""
    from fdfo_core.backends.diffusers_backend import build_backend

    backend = make_backend(case, tmp, add_adapter=False)
    backend.pipe.save_pretrained(tmp / "model")
    loaded = build_backend(tmp / "model", backend.config, max_sequence_length=case.max_sequence_length, add_adapter=False)
    x, t, cond = probe(backend)
    with torch.no_grad():
        v = backend.velocity(x, t, cond)
        v_loaded = loaded.velocity(x, t, loaded.encode_prompts(PROMPTS))
    return {"family": loaded.family, "pipeline": type(loaded.pipe).__name__, "diff": relative(v_loaded, v)}
