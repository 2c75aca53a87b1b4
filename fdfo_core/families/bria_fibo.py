"""Bria FIBO (8B): a Flux-layout MMDiT fed by every layer of a SmolLM3-3B text encoder, on the
Wan 2.2 VAE's 48-channel 16x latents, trained on structured JSON captions.

diffusers: `BriaFiboPipeline` with `BriaFiboTransformer2DModel`. What it does differently:
- **latents**: [B, 48, H/16, W/16] of the Wan 2.2 VAE, one token per latent cell (no 2x2
  packing: `do_patching=False`); decoding raw = latents * std + mean per channel, on one frame;
- **time**: timestep = 1000 t (the scheduler's timestep, not t as in Flux), Flux's grid
  linspace(1, 1/n, n) with mu from the latent cells (not 2x2 patches);
- **per-layer text**: the text input is [last; second-to-last] hidden state (2 x 2048) and, for
  block k of the (double then single) blocks, hidden state number k of the last ones (the last one
  repeated when the encoder has fewer layers than the transformer has blocks), each projected and
  concatenated into that block's text stream;
- **text length**: prompts are padded to the batch's longest with a mask the transformer honours
  (FDFO pads to `max_sequence_length`, masked, which gives the same result); the empty prompt is
  the BOS token alone (id 128000 hard-coded), as the pipeline encodes its negative prompt;
- prompts are JSON captions (Bria's FIBO-VLM "prompt-to-JSON" model writes them from a short
  prompt, outside the pipeline): a plain-text prompt is accepted, with a warning;
- CFG: guidance_scale 5 with the empty negative prompt (FDFO's cfg_scale).
Bria FIBO 2 (`BriaFibo2Pipeline`: Qwen3-VL text encoder, Flux.2 VAE, text drawn into images) is a
different model, refused (see `refused.py`). ComfyUI (up to v0.8.0) has no FIBO model: LoRA files
use diffusers' module names.
"""

from __future__ import annotations

import json
import warnings

import torch
import torch.nn.functional as F

from .base import MMDIT_ATTENTION_TARGETS, Family, FamilyOptions
from .common import decode_one_frame, image_position_ids
from .lora_map import LoraMap, same_names


def is_json_caption(prompt: str) -> bool:
    """Whether a prompt is a JSON object (FIBO's structured caption); the empty prompt counts as one."""
    if not prompt:
        return True
    try:
        return isinstance(json.loads(prompt), dict)
    except ValueError:
        return False


def block_layers(num_hidden_states: int, num_blocks: int) -> list[int]:
    """Which text-encoder hidden state feeds each transformer block (`BriaFiboPipeline.__call__`):
    the last `num_blocks` ones, or all of them and the last repeated."""
    if num_hidden_states >= num_blocks:
        return list(range(num_hidden_states - num_blocks, num_hidden_states))
    return list(range(num_hidden_states)) + [num_hidden_states - 1] * (num_blocks - num_hidden_states)


class BriaFibo(Family):
    name = "bria_fibo"
    title = "Bria FIBO"
    min_diffusers = ("0.36", "BriaFiboPipeline first shipped in diffusers 0.36")
    diffusers_pipelines = ("BriaFiboPipeline",)
    diffusers_transformers = ("BriaFiboTransformer2DModel",)
    diffusers_needs_input = {"BriaFiboEditPipeline": "an input image (FIBO Edit)"}
    latent_patch = 1  # one token per 16x latent cell
    lora_map = LoraMap(tuple(
        same_names("transformer_blocks.{i}.attn.", MMDIT_ATTENTION_TARGETS)
        + same_names("single_transformer_blocks.{i}.attn.", ("to_q", "to_k", "to_v"))))
    lora_targets = MMDIT_ATTENTION_TARGETS
    # The pipeline allows 3000 (JSON captions run to ~1000 tokens); every token is kept per layer.
    max_sequence_length = 1024
    preset_name = "bria-fibo"
    # The pipeline's 1024 px and 50 steps; FDFO trains without CFG (the published default; the pipeline
    # samples with CFG 5: `--cfg-scale 5`).
    preset = {"height": 1024, "width": 1024, "num_steps": 50}
    vram = ("8 B transformer (16 GB in bf16) plus SmolLM3-3B (6 GB) while prompts are encoded; every prompt keeps "
            "all 37 hidden states of its text (~75 MB per 1000 tokens in bf16): 48 GB at 1024 px with gradient "
            "checkpointing (estimates from the parameter count, not measured)")

    def _num_blocks(self, pipe) -> int:
        config = pipe.transformer.config
        return config.num_layers + config.num_single_layers

    def diffusers_image_seq_len(self, pipe, height, width):
        _, h, w = self.diffusers_latent_shape(pipe, height, width)
        return h * w  # one token per latent cell

    def conditioning_shapes(self, transformer_config, max_sequence_length):
        d = int(transformer_config["text_encoder_dim"])
        layers = int(transformer_config["num_layers"]) + int(transformer_config["num_single_layers"])
        return {"prompt_embeds": ((max_sequence_length, 2 * d), "float"),
                "prompt_layers": ((layers, max_sequence_length, d), "float"),
                "prompt_mask": ((max_sequence_length,), "mask")}

    def diffusers_encode_prompts(self, pipe, prompts, device, options: FamilyOptions):
        plain = [p for p in prompts if not is_json_caption(p)]
        if plain:
            warnings.warn(f"Bria FIBO was trained on structured JSON captions; {len(plain)} prompt(s) are plain text "
                          f"(e.g. {plain[0][:60]!r}). Write them as JSON (Bria's FIBO-VLM prompt-to-JSON model "
                          "does it) for the model's intended behaviour.", stacklevel=2)
        length = options.max_sequence_length
        out: dict[str, torch.Tensor] = {}
        # Empty prompts apart: in a batch with others the pipeline would fill a whole padded row with BOS
        # tokens, all attended; alone (how it encodes its negative prompt) "" is one BOS token.
        for empty in (False, True):
            rows = [i for i, p in enumerate(prompts) if (p == "") == empty]
            if not rows:
                continue
            emb, layers, mask = pipe.get_prompt_embeds([prompts[i] for i in rows], max_sequence_length=length,
                                                       device=device)
            used = [layers[i] for i in block_layers(len(layers), self._num_blocks(pipe))]
            pad = length - emb.shape[1]
            part = {"prompt_embeds": F.pad(emb, (0, 0, 0, pad)),
                    "prompt_layers": F.pad(torch.stack(used, dim=1), (0, 0, 0, pad)).to(emb.dtype),  # [B, blocks, L, D]
                    "prompt_mask": F.pad(mask.long(), (0, pad))}
            for key, value in part.items():
                if key not in out:
                    out[key] = value.new_zeros(len(prompts), *value.shape[1:])
                out[key][rows] = value
        return out

    def diffusers_velocity(self, pipe, x, t, cond, options):
        b, c, h, w = x.shape
        mask = cond["prompt_mask"]
        used = int(mask.sum(dim=1).max())  # the batch's longest prompt: the padding beyond is dropped
        emb, layers, mask = cond["prompt_embeds"][:, :used], cond["prompt_layers"][:, :, :used], mask[:, :used]
        kwargs = {}
        if not bool(mask.all()):
            full = torch.cat([mask.bool(), torch.ones(b, h * w, dtype=torch.bool, device=mask.device)], dim=1)
            kwargs["attention_mask"] = full[:, None, None, :]
        img_ids = image_position_ids(h, w, x.device, x.dtype)
        out = pipe.transformer(
            hidden_states=x.flatten(2).transpose(1, 2), timestep=(t * 1000).to(x.dtype), encoder_hidden_states=emb,
            text_encoder_layers=list(layers.unbind(1)), txt_ids=torch.zeros(used, 3, device=x.device, dtype=x.dtype),
            img_ids=img_ids, joint_attention_kwargs=kwargs, return_dict=False,
        )[0]
        return out.transpose(1, 2).reshape(b, c, h, w)

    def diffusers_decode(self, pipe, latents):
        return decode_one_frame(pipe.vae, latents)


FAMILY = BriaFibo()
