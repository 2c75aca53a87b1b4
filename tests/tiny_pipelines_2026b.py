"""Tiny pipelines of the 2026 families (part b: Sana, CogView4, Ovis-Image, Bria FIBO), built from
configs with random weights (nothing downloaded); see tests/tiny_pipelines.py for the shared parts."""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_pipelines import reinit_weights, tiny_qwen3_tokenizer, tiny_qwen_tokenizer, tiny_vae


def calibrate_decoder(decode, last_conv: torch.nn.Conv2d, latent_shape: tuple[int, ...], seed: int,
                      spread: float = 0.3) -> None:
    """Scale a random decoder's last convolution so that decoded images have about `spread` std
    around mid-grey (pixels are rarely clipped and the image depends smoothly on the latent)."""
    with torch.no_grad():
        if last_conv.bias is not None:
            last_conv.bias.zero_()
        z = torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed))
        last_conv.weight.mul_(spread / decode(z).std())


# --- Sana ---------------------------------------------------------------------------------------------


def tiny_dc_ae(seed: int, blocks: int = 6):
    """AutoencoderDC (Sana's deep-compression VAE), 32 latent channels, 2^(blocks - 1) x compression
    (6 blocks: the true 32x), 8 channels wide (the deepest stage 32), one ResBlock per stage, no attention."""
    from diffusers import AutoencoderDC

    torch.manual_seed(seed)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=32, attention_head_dim=8,
        encoder_block_types="ResBlock", decoder_block_types="ResBlock",
        # (the last stage as wide as the latent: the shortcuts repeat / average latent channels)
        encoder_block_out_channels=(8,) * (blocks - 1) + (32,), decoder_block_out_channels=(8,) * (blocks - 1) + (32,),
        encoder_layers_per_block=(1,) * blocks, decoder_layers_per_block=(1,) * blocks,
        encoder_qkv_multiscales=((),) * blocks, decoder_qkv_multiscales=((),) * blocks,
        scaling_factor=0.41407,
    )
    reinit_weights(vae, seed, gain=1.2)
    calibrate_decoder(lambda z: vae.decode(z).sample, vae.decoder.conv_out.conv if hasattr(vae.decoder.conv_out, "conv")
                      else vae.decoder.conv_out, (4, 32, 2, 2), seed)
    return vae.eval()


def tiny_gemma2(seed: int, vocab_size: int, pad_token_id: int, hidden: int = 32):
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    return Gemma2Model(Gemma2Config(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=4096,
        pad_token_id=pad_token_id, bos_token_id=None, eos_token_id=None,
    )).eval()


def tiny_sana_pipeline(tmp: Path, seed: int = 0, num_layers: int = 1, solver_order: int = 1):
    """SanaPipeline at 128x128 px (4x4 latents of the 32x DC-AE, 32 channels): a 2-layer Gemma-2
    (hidden 32) with a byte-level tokenizer (the pipeline's complex human instruction is ~700
    tokens), a Sana transformer of width 32 (2 heads of 16; cross-attention 2 heads of 16), the
    DPM-Solver++ flow scheduler Sana ships (flow_shift 3) at `solver_order` (1: the pipeline
    samples as FDFO's Euler solver does; Sana ships 2)."""
    from diffusers import DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    tok = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=16, num_layers=num_layers,
        num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=32,
        mlp_ratio=2.5, sample_size=4, patch_size=1,
    )
    reinit_weights(transformer, seed)
    scheduler = DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, solver_order=solver_order,
    )
    return SanaPipeline(tokenizer=tok, text_encoder=tiny_gemma2(seed + 2, len(tok), tok.pad_token_id),
                        vae=tiny_dc_ae(seed + 1), transformer=transformer.eval(), scheduler=scheduler)


# --- CogView4 -------------------------------------------------------------------------------------------


def tiny_glm_tokenizer():
    """The byte-level tokenizer with GLM-4's conventions: "[gMASK]<sop>" before every text (so the
    empty prompt is two tokens) and left padding; the harness prompts' words are single tokens (so
    that each is at most 16 tokens and a pipeline batch pads none of them further)."""
    from tokenizers.processors import TemplateProcessing

    tok = tiny_qwen_tokenizer()
    tok.add_tokens(["red", "circle", "two", "blue", "squares", "green", "triangle"])
    tok.add_special_tokens({"additional_special_tokens": ["[gMASK]", "<sop>"]})
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("[gMASK]", "<sop>")}
    tok._tokenizer.post_processor = TemplateProcessing(single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B",
                                                       special_tokens=list(ids.items()))
    tok.padding_side = "left"
    return tok


def tiny_cogview4_pipeline(tmp: Path, seed: int = 0, num_layers: int = 1):
    """CogView4Pipeline at 64x64 px (8x8 latents, 2x2 patches in the transformer): a 3-layer GLM
    (hidden 32; the pipeline reads the second-to-last hidden state), a transformer of width 32
    (2 heads of 16), the tiny 16-channel VAE, CogView4's scheduler (linear time shift with its
    square-root mu)."""
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    tok = tiny_glm_tokenizer()
    torch.manual_seed(seed)
    transformer = CogView4Transformer2DModel(
        patch_size=2, in_channels=16, out_channels=16, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=2, text_embed_dim=32, time_embed_dim=32, condition_dim=16, pos_embed_max_size=16,
        sample_size=8, rope_axes_dim=(16, 16),
    )
    reinit_weights(transformer, seed)
    torch.manual_seed(seed + 2)
    text_encoder = GlmModel(GlmConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
    )).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.25, max_image_seq_len=4096, max_shift=0.75, shift=1.0,
        time_shift_type="linear", use_dynamic_shifting=True,
    )
    return CogView4Pipeline(tokenizer=tok, text_encoder=text_encoder, vae=tiny_vae(1.0, 0.0, seed + 1),
                            transformer=transformer.eval(), scheduler=scheduler)


# --- Ovis-Image -----------------------------------------------------------------------------------------


def tiny_ovis_image_pipeline(tmp: Path, seed: int = 0, num_layers: int = 1, num_single_layers: int = 1):
    """OvisImagePipeline at 64x64 px (8x8 latents, 16 packed tokens): a 2-layer Qwen3 (hidden 32) with
    the byte-level tokenizer and a Qwen3 chat template, a transformer of width 32 (2 heads of 16)
    with one double and one single block, the tiny 16-channel VAE, Flux's dynamic shift. The
    pipeline drops a hard-coded 28 tokens (chat header + system prompt in Qwen's tokenizer): here
    one token per byte, so the builder sets `user_prompt_begin_id` to that prefix's length (not
    saved with the folder)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, OvisImagePipeline, OvisImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tok = tiny_qwen3_tokenizer()
    torch.manual_seed(seed)
    transformer = OvisImageTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6),
    )
    reinit_weights(transformer, seed)
    torch.manual_seed(seed + 2)
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
    )).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = OvisImagePipeline(scheduler=scheduler, vae=tiny_vae(0.3611, 0.1159, seed + 1), text_encoder=text_encoder,
                             tokenizer=tok, transformer=transformer.eval())
    marker = "\x00"
    text = tok.apply_chat_template([{"role": "user", "content": pipe.system_prompt + marker}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=False)
    pipe.user_prompt_begin_id = len(tok(text.split(marker)[0], add_special_tokens=False).input_ids)
    return pipe


# --- Bria FIBO ------------------------------------------------------------------------------------------


def tiny_wan22_vae(seed: int):
    """The Wan 2.2 VAE layout (48 channels, residual, 16x with its 2x2 patching), 8 channels wide, with
    per-channel statistics away from (0, 1) so that a missed de-normalisation shows."""
    from diffusers import AutoencoderKLWan

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                            temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                            out_channels=12, patch_size=2, scale_factor_spatial=16,
                            latents_mean=(torch.randn(48, generator=g) * 0.1).tolist(),
                            latents_std=(torch.rand(48, generator=g) + 0.5).tolist()).eval()


def tiny_bria_fibo_pipeline(tmp: Path, seed: int = 0, num_layers: int = 1, num_single_layers: int = 2):
    """BriaFiboPipeline at 64x64 px (4x4 cells of the 16x Wan 2.2 VAE, 48 channels, one token each): a
    1-layer SmolLM3 (hidden 16; its vocabulary reaches the BOS id 128000 the pipeline hard-codes for
    the empty prompt) with the byte-level tokenizer, a transformer of width 32 (2 heads of 16) with one
    double and two single blocks: three blocks for two hidden states, so the last is repeated as in
    FIBO (37 hidden states, 46 blocks)."""
    from diffusers import BriaFiboPipeline, BriaFiboTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    tok = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = BriaFiboTransformer2DModel(
        patch_size=1, in_channels=48, num_layers=num_layers, num_single_layers=num_single_layers, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 6, 6], text_encoder_dim=16,
    )
    reinit_weights(transformer, seed)
    torch.manual_seed(seed + 2)
    text_encoder = SmolLM3ForCausalLM(SmolLM3Config(
        vocab_size=128256, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=4096, pad_token_id=tok.pad_token_id, bos_token_id=128000,
        eos_token_id=tok.eos_token_id,
    )).eval()
    # FIBO's scheduler: Flux's dynamic shift (mu from the latent cells).
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return BriaFiboPipeline(transformer=transformer.eval(), scheduler=scheduler, vae=tiny_wan22_vae(seed + 1),
                            text_encoder=text_encoder, tokenizer=tok)
