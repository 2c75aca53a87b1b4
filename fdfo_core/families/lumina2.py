"""Lumina-Image 2.0 (and fine-tunes such as Neta Lumina): a 2.6 B unified next-DiT with a Gemma-2
2B text encoder and the Flux.1 VAE.

diffusers: `Lumina2Pipeline` with `Lumina2Transformer2DModel`; latents [B, 16, h, w] unpacked
(the transformer patchifies 2x2 itself). The model's time runs the other way: it takes
timestep = 1 - t and predicts -(noise - x_0), so the velocity is minus its output. The prompt is
prefixed with the pipeline's `system_prompt` (" <Prompt Start> " between; the ComfyUI backend
adds the same default system prompt, as ComfyUI's CLIPTextEncodeLumina2 does), encoded by Gemma-2
(second-to-last hidden state), padded to `max_sequence_length` tokens with an attention mask the
transformer honours (text first, image tokens after each prompt's own length). Time grid:
linspace(1, 1/n, n) shifted by the scheduler (shift 6).
ComfyUI: `comfy.model_base.Lumina2` (`NextDiT`): attention linears `attention.qkv` (fused
[q, k, v]; k and v have `n_kv_heads` heads, fewer than q's) and `attention.out` in `layers`,
`noise_refiner` and `context_refiner` (diffusers `attn.to_q` / `to_k` / `to_v` / `to_out.0`).
"""

from __future__ import annotations

from .base import Family, FamilyOptions
from .lora_map import LoraMap, fused


def _qkv_rows(in_features: int, out_features: int) -> list[int]:
    # qkv = [q (n_heads x head_dim = the model width = in_features), k, v (n_kv_heads x head_dim each)]
    kv = (out_features - in_features) // 2
    return [in_features, kv, kv]


def _lumina2_map() -> LoraMap:
    modules = []
    for group in ("layers", "noise_refiner", "context_refiner"):
        d, c = f"{group}.{{i}}.attn.", f"{group}.{{i}}.attention."
        modules.append(fused(c + "qkv", d, ("to_q", "to_k", "to_v"), split=_qkv_rows))
        modules.append(fused(c + "out", d, ("to_out.0",)))
    return LoraMap(tuple(modules))


#: Lumina2Pipeline's default `system_prompt`, which is also the "superior" choice of ComfyUI's
#: CLIPTextEncodeLumina2 node (the documented way to prompt Lumina 2 in ComfyUI).
SYSTEM_PROMPT = ("You are an assistant designed to generate superior images with the superior degree of image-text "
                 "alignment based on textual prompts or user prompts.")


def with_system_prompt(prompt: str, system_prompt: str = SYSTEM_PROMPT) -> str:
    """"<system prompt> <Prompt Start> <prompt>": how Lumina2Pipeline.encode_prompt and ComfyUI's
    CLIPTextEncodeLumina2 both build the text Gemma encodes."""
    return f"{system_prompt} <Prompt Start> {prompt}"


class Lumina2(Family):
    name = "lumina2"
    title = "Lumina-Image 2.0 (and fine-tunes, e.g. Neta Lumina)"
    diffusers_pipelines = ("Lumina2Pipeline", "Lumina2Text2ImgPipeline")
    diffusers_transformers = ("Lumina2Transformer2DModel",)
    comfy_models = ("Lumina2",)
    latent_patch = 2
    lora_map = _lumina2_map()
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    fingerprint_module = "norm_out.linear_2"  # the final projection
    # Lumina2Pipeline's default; the system prompt takes ~30 of them.
    max_sequence_length = 256
    preset_name = "lumina2"
    # Native 1024 px; the pipeline's default 30 steps. FDFO trains without CFG (the published default).
    preset = {"height": 1024, "width": 1024, "num_steps": 30}
    vram = ("2.6 B (~5 GB in bf16) + Gemma-2 2B text encoder (~5 GB, offloaded between phases): 24 GB at 1024 px "
            "with gradient checkpointing, 48 GB with the published settings (estimates from the parameter "
            "count, not measured)")

    def comfy_prompt(self, prompt: str) -> str:
        # ComfyUI's plain CLIPTextEncode feeds the bare prompt; the pipeline (and ComfyUI's own
        # CLIPTextEncodeLumina2) the system prompt first: train on what the LoRA is used with.
        return with_system_prompt(prompt)

    def diffusers_image_seq_len(self, pipe, height, width):
        # Lumina2Pipeline computes mu from `latents.shape[1]` of its unpacked latents, the channel count;
        # kept so that FDFO samples on the pipeline's grid (the shipped scheduler has no dynamic shift).
        return self.diffusers_latent_shape(pipe, height, width)[0]

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        emb, mask, _, _ = pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False, device=device,
                                             max_sequence_length=options.max_sequence_length)
        return {"prompt_embeds": emb, "prompt_mask": mask.long()}

    def diffusers_velocity(self, pipe, x, t, cond, options):
        # Padding (right, masked) never reaches the image: the transformer takes each prompt's first
        # mask.sum() tokens into the joint sequence.
        out = pipe.transformer(hidden_states=x, timestep=(1 - t).to(x.dtype), encoder_hidden_states=cond["prompt_embeds"],
                               encoder_attention_mask=cond["prompt_mask"], return_dict=False)[0]
        return -out


FAMILY = Lumina2()
