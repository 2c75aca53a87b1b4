"""HiDream-I1 (Full, Dev, Fast): a 17.1 B sparse (mixture-of-experts) DiT fed by four text encoders.

diffusers: `HiDreamImagePipeline` with `HiDreamImageTransformer2DModel`. Latents [B, 16, h, w]
(Flux VAE), patchified 2x2 inside the transformer; timestep = 1000 t; conditioning: CLIP-L and
CLIP-G pooled embeddings concatenated, T5 tokens, and the hidden states of every Llama 3.1 layer
([layers, B, L, D]; each block reads the layer its config's `llama_layers` names). The transformer
returns minus the velocity (the pipeline negates it). The time grid is the scheduler's own grid
with mu from the transformer's maximum token count (resolution independent); with the UniPC
scheduler in flow mode (which the pipeline also handles) it is UniPC's own `set_timesteps(n)` grid,
which FDFO integrates with its own solver.
The MoE feed-forward runs its routed experts under `torch.no_grad()` in eval mode (diffusers'
inference path), which would cut the gradient of every earlier LoRA through them; the trainer
runs those modules on their (same-valued, differentiable) training path instead.
ComfyUI: `comfy.model_base.HiDream`, module names identical to diffusers' (no fused linears).
"""

from __future__ import annotations

from .base import DistilledCheckpoint, Family, FamilyOptions
from ..flow.schedules import flux_mu
from .common import scheduler_set_timesteps_sigmas
from .lora_map import LoraMap, same_names

_DOUBLE = ("to_q", "to_k", "to_v", "to_out", "to_q_t", "to_k_t", "to_v_t", "to_out_t")
_SINGLE = ("to_q", "to_k", "to_v", "to_out")


class HiDream(Family):
    name = "hidream"
    title = "HiDream-I1 (Full, Dev, Fast)"
    min_diffusers = ("0.34", "HiDreamImagePipeline first shipped in diffusers 0.34")
    diffusers_pipelines = ("HiDreamImagePipeline",)
    diffusers_transformers = ("HiDreamImageTransformer2DModel",)
    diffusers_flow_schedulers = ("UniPCMultistepScheduler",)
    comfy_models = ("HiDream",)
    lora_map = LoraMap(tuple(
        same_names("double_stream_blocks.{i}.block.attn1.", _DOUBLE)
        + same_names("single_stream_blocks.{i}.block.attn1.", _SINGLE)
    ))
    # The attention projections of both streams (image: to_*, text: to_*_t).
    lora_targets = _DOUBLE
    fingerprint_module = "final_layer.linear"
    max_sequence_length = 128
    preset_name = "hidream"
    preset = {"height": 1024, "width": 1024, "num_steps": 28}
    _full = "HiDream-I1-Full (HiDream-ai/HiDream-I1-Full, the undistilled model; 50 steps, CFG 5)"
    distilled = (
        DistilledCheckpoint(title="HiDream-I1-Dev", kind="guidance-distilled (28 steps, no CFG)", base_model=_full,
                            settings={"num_steps": 28, "cfg_scale": 1.0}, names=("i1-dev", "hidream-dev")),
        DistilledCheckpoint(title="HiDream-I1-Fast", kind="step-distilled (16 steps, no CFG)", base_model=_full,
                            settings={"num_steps": 16, "cfg_scale": 1.0}, names=("i1-fast", "hidream-fast")),
    )
    vram = ("17.1 B (MoE): ~34 GB in bf16, ~17 GB in fp8, plus Llama 3.1 8B (~16 GB, offloaded between phases). 48 GB: "
            "fp8 at 1024 px with storage_device cpu and gradient checkpointing; 80 GB: bf16 at 1024 px with gradient "
            "checkpointing (estimates from the parameter count)")

    def diffusers_prepare(self, pipe) -> None:
        for module in pipe.transformer.modules():
            if type(module).__name__ == "MOEFeedForwardSwiGLU":
                module.training = True  # the module only (its gate stays in eval: no auxiliary loss)

    def diffusers_sigmas(self, pipe, num_steps, height, width):
        if "FlowMatch" not in type(pipe.scheduler).__name__:  # UniPC in flow mode: set_timesteps(n), no mu
            return scheduler_set_timesteps_sigmas(pipe.scheduler, num_steps)
        fresh = type(pipe.scheduler).from_config(pipe.scheduler.config)
        kwargs = {}
        if fresh.config.get("use_dynamic_shifting", False):
            kwargs["mu"] = flux_mu(pipe.transformer.max_seq)  # the pipeline's defaults, not the config's
        fresh.set_timesteps(num_steps, **kwargs)
        return fresh.sigmas.float().cpu()

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        t5, _, llama, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, device=device, do_classifier_free_guidance=False,
            max_sequence_length=options.max_sequence_length,
        )
        return {"t5": t5, "llama3": llama.transpose(0, 1), "pooled": pooled}  # llama3: [B, layers, L, D]

    def diffusers_velocity(self, pipe, x, t, cond, options):
        dtype = x.dtype
        out = pipe.transformer(
            hidden_states=x, timesteps=t.float() * 1000, encoder_hidden_states_t5=cond["t5"].to(dtype),
            encoder_hidden_states_llama3=cond["llama3"].transpose(0, 1).to(dtype), pooled_embeds=cond["pooled"].to(dtype),
            return_dict=False,
        )[0]
        return -out


FAMILY = HiDream()
