"""Tiny SD3 and Flux pipelines built from configs (random weights, nothing downloaded).

Weights are re-initialised with a larger scale than the library default so that a LoRA update
visibly changes the output (with std 0.02 a LoRA change moves the velocity by ~1e-6).
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

MAX_TOKENS = 16


def tiny_clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer whose vocabulary is single characters (one token per character)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits + ".,!?'-":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS, pad_token="<|endoftext|>")
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    return tok


def reinit_weights(module: torch.nn.Module, seed: int, gain: float = 1.0) -> None:
    """Re-draw `module`'s weights from `seed`: matrices N(0, gain^2 / fan_in), biases N(0, 0.02^2), other
    vectors (norm scales) kept; a generous init so tiny random models give distinct outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * gain / fan_in**0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def tiny_vae(scaling_factor: float, shift_factor: float, seed: int):
    """AutoencoderTiny with 16 latent channels and 8x downsampling, 8 channels wide."""
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny(
        in_channels=3, out_channels=3, latent_channels=16,
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
        scaling_factor=scaling_factor, shift_factor=shift_factor,
    )
    reinit_weights(vae, seed, gain=1.2)
    with torch.no_grad():
        # Calibrate the random decoder: mid-grey images with a spread of about 0.15, so pixels are
        # rarely clipped and the image depends smoothly on the latent.
        last = vae.decoder.layers[-1]
        last.bias.zero_()
        z = torch.randn(16, 16, 8, 8, generator=torch.Generator().manual_seed(seed))
        last.weight.mul_(0.3 / vae.decoder(z).std())
        last.bias.fill_(0.5)
    return vae.eval()


def tiny_clip(seed: int, vocab_size: int, projection: bool = True):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=16,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def tiny_sd3_pipeline(tmp: Path, seed: int = 0, num_layers: int = 2, head_dim: int = 16, heads: int = 2,
                      dual_attention_layers: tuple[int, ...] = (), qk_norm: str | None = None):
    """StableDiffusion3Pipeline at 64x64 px (8x8 latents), no T5. ComfyUI's converter of diffusers
    SD3 weights needs hidden = 64 x depth (head_dim 64, heads = num_layers); SD3.5 Medium has dual
    attention in its first blocks and RMS q/k-norm."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok = tiny_clip_tokenizer(tmp / "tok")
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=num_layers, attention_head_dim=head_dim,
        num_attention_heads=heads, joint_attention_dim=32, caption_projection_dim=head_dim * heads,
        pooled_projection_dim=32, out_channels=16, pos_embed_max_size=16,
        dual_attention_layers=tuple(dual_attention_layers), qk_norm=qk_norm,
    )
    reinit_weights(transformer, seed)
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(), vae=tiny_vae(1.5305, 0.0609, seed + 1),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=tiny_clip(seed + 2, len(tok)), tokenizer=tok,
        text_encoder_2=tiny_clip(seed + 3, len(tok)), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None,
    )


def tiny_flux_pipeline(tmp: Path, seed: int = 0, guidance_embeds: bool = True, pipeline: str = "FluxPipeline"):
    """FluxPipeline at 64x64 px (8x8 latents, 16 packed tokens): dev (guidance embedding, dynamic
    shift), schnell (guidance_embeds=False, no shift) or Kontext (pipeline="FluxKontextPipeline")."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tok = tiny_clip_tokenizer(tmp / "tok")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
        guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4),
    )
    reinit_weights(transformer, seed)
    torch.manual_seed(seed + 2)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).eval()
    if guidance_embeds:
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
    else:  # schnell's scheduler: no shift
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return getattr(diffusers, pipeline)(
        scheduler=scheduler, vae=tiny_vae(0.3611, 0.1159, seed + 1),
        text_encoder=tiny_clip(seed + 3, len(tok), projection=False), tokenizer=tok,
        text_encoder_2=t5, tokenizer_2=tok, transformer=transformer.eval(),
    )


def tiny_qwen_tokenizer():
    """A byte-level BPE Qwen2 tokenizer with no merges: one token per byte."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>")


def tiny_qwen_image_pipeline(tmp: Path, seed: int = 0, num_layers: int = 2):
    """QwenImagePipeline at 64x64 px (8x8 latents, 16 packed tokens): a 1-layer Qwen2.5-VL text
    encoder (hidden 32) and a narrow Qwen-Image (Wan 2.1 layout) VAE."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6),
    )
    reinit_weights(transformer, seed)
    torch.manual_seed(seed + 2)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           patch_size=2, spatial_merge_size=1, temporal_patch_size=1, fullatt_block_indexes=[0]),
    )).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                 temperal_downsample=[False, True, True]).eval()
    # Qwen-Image's scheduler settings (exponential time shift with a resolution-dependent mu).
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    )
    pipe = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tok,
                             transformer=transformer.eval())
    # The pipeline drops the chat template's system prefix by token count (34 for Qwen's own
    # tokenizer); with one token per byte it is the prefix's length in bytes.
    prefix = pipe.prompt_template_encode.split("{}")[0]
    pipe.prompt_template_encode_start_idx = len(tok(prefix).input_ids)
    return pipe


def tiny_chroma_pipeline(tmp: Path, seed: int = 0, num_layers: int = 19, num_single_layers: int = 38):
    """ChromaPipeline at 64x64 px (8x8 latents, 16 packed tokens), 16 wide. ComfyUI's Chroma
    hard-codes the modulation count of the real model (344 = 3 x 38 single + 12 x 19 double + 2):
    the final layer's modulation is the last two of those, so only the true 19 / 38 blocks (or
    another split with 3 S + 12 D = 342) give the same model in both."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    tok = tiny_clip_tokenizer(tmp / "tok")
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(2, 2, 4),
        approximator_num_channels=64, approximator_hidden_dim=32, approximator_layers=2,
    )
    reinit_weights(transformer, seed)
    torch.manual_seed(seed + 2)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).eval()
    # Chroma's scheduler: Flux's dynamic shift.
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return ChromaPipeline(scheduler=scheduler, vae=tiny_vae(0.3611, 0.1159, seed + 1), text_encoder=t5,
                          tokenizer=tok, transformer=transformer.eval())


def tiny_hidream_pipeline(tmp: Path, seed: int = 0, num_layers: int = 1, num_single_layers: int = 1):
    """HiDreamImagePipeline at 64x64 px (8x8 latents, 16 tokens of 2x2 patches): CLIP-L and CLIP-G
    (pooled, with projection), T5 and a 2-layer Llama (every layer's hidden states feed the
    blocks), all 16 wide; MoE feed-forward with 4 routed experts, 2 active. The pipeline resizes
    every request to its default area (128 x 8 px squared): `default_sample_size` = 8 keeps 64 px."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline, HiDreamImageTransformer2DModel
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5EncoderModel

    tok = tiny_clip_tokenizer(tmp / "tok")
    torch.manual_seed(seed)
    llama_layers = 2
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, caption_channels=[16, 16], text_emb_dim=32,
        num_routed_experts=4, num_activated_experts=2, axes_dims_rope=(8, 4, 4), max_resolution=(16, 16),
        llama_layers=[i % llama_layers for i in range(num_layers + num_single_layers)],
    )
    reinit_weights(transformer, seed)
    torch.manual_seed(seed + 2)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).eval()
    torch.manual_seed(seed + 5)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=llama_layers, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).eval()
    pipe = HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(0.3611, 0.1159, seed + 1),
        text_encoder=tiny_clip(seed + 3, len(tok)), tokenizer=tok, text_encoder_2=tiny_clip(seed + 4, len(tok)),
        tokenizer_2=tok, text_encoder_3=t5, tokenizer_3=tok, text_encoder_4=llama, tokenizer_4=tok,
        transformer=transformer.eval(),
    )
    pipe.default_sample_size = 8
    return pipe


# --- Flux.2, Flux.2 Klein, Z-Image ------------------------------------------------------------------

#: A short Qwen3-style chat template (the real one also handles tools and past thinking): each
#: message as <|im_start|>role\ncontent<|im_end|>, then the assistant header, with the empty
#: thinking block Qwen3 inserts when thinking is off.
QWEN3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)

#: A Mistral-style chat template over content lists ([{"type": "text", "text": ...}]), as
#: Flux2Pipeline formats its system message and prompt.
MISTRAL_CHAT_TEMPLATE = (
    "<s>{% for m in messages %}{% for c in m['content'] %}{% if m['role'] == 'system' %}"
    "[SYSTEM_PROMPT]{{ c['text'] }}[/SYSTEM_PROMPT]{% else %}[INST]{{ c['text'] }}[/INST]{% endif %}"
    "{% endfor %}{% endfor %}"
)


def tiny_qwen3_tokenizer():
    """The byte-level Qwen tokenizer with a Qwen3 chat template (one token per byte; the chat
    markers are single special tokens, as in Qwen's own tokenizer)."""
    tok = tiny_qwen_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    return tok


def tiny_qwen3(seed: int, vocab_size: int, pad_token_id: int, num_layers: int, hidden: int = 16):
    """Qwen3ForCausalLM (the Flux.2 Klein / Z-Image text encoder layout: GQA, q/k-norm), tiny."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2, max_position_embeddings=4096,
        pad_token_id=pad_token_id, tie_word_embeddings=True,
    )).eval()


def tiny_flux2_vae(seed: int):
    """AutoencoderKLFlux2 (32 latent channels, 8x downsampling, 2x2 latent patches and the batch
    norm the pipelines normalise patched latents with), 8 channels wide; the decoder is calibrated
    like `tiny_vae` and the batch-norm statistics are set away from (0, 1) so a missed
    de-normalisation shows."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                             latent_channels=32, mid_block_add_attention=False)
    reinit_weights(vae, seed, gain=1.2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn(vae.bn.running_mean.shape, generator=g) * 0.2)
        vae.bn.running_var.copy_(torch.rand(vae.bn.running_var.shape, generator=g) + 0.5)
        out = vae.decoder.conv_out
        out.bias.zero_()
        z = torch.randn(4, 32, 8, 8, generator=g)
        out.weight.mul_(0.3 / vae.decoder(vae.post_quant_conv(z)).std())
        out.bias.fill_(0.0)
    return vae.eval()


def _flux2_transformer(seed: int, joint_attention_dim: int, guidance_embeds: bool, timestep_guidance_channels: int = 32):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=joint_attention_dim, timestep_guidance_channels=timestep_guidance_channels,
        mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=guidance_embeds,
    )
    reinit_weights(transformer, seed)
    return transformer.eval()


def _flux2_scheduler():
    # Flux.2's scheduler settings: the pipeline passes its own empirical mu.
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential")


def tiny_flux2_pipeline(tmp: Path, seed: int = 0, timestep_guidance_channels: int = 32):
    """Flux2Pipeline (Flux.2 dev layout) at 64x64 px (4x4 tokens of 2x2 x 32-channel latents): a
    Mistral3 text encoder with 30 text layers (the pipeline stacks hidden states 10, 20, 30),
    hidden 16, a byte-level tokenizer with a Mistral chat template (its markers single special tokens;
    the pipeline's 168-byte system message comes first), guidance embedding.
    timestep_guidance_channels: 256 as published (and hard-coded in ComfyUI's Flux), 32 for speed."""
    from diffusers import Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tok = tiny_qwen_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<s>", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[INST]", "[/INST]"]})
    tok.chat_template = MISTRAL_CHAT_TEMPLATE
    torch.manual_seed(seed + 2)
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
        text_config=dict(model_type="mistral", vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=30, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=4096, pad_token_id=tok.pad_token_id),
        vision_config=dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, head_dim=8, patch_size=4, image_size=32),
        spatial_merge_size=1,
    )).eval()
    return Flux2Pipeline(scheduler=_flux2_scheduler(), vae=tiny_flux2_vae(seed + 1), text_encoder=text_encoder,
                         tokenizer=tok, transformer=_flux2_transformer(seed, 3 * 16, guidance_embeds=True,
                                                                       timestep_guidance_channels=timestep_guidance_channels))


def tiny_flux2_klein_pipeline(tmp: Path, seed: int = 0, is_distilled: bool = False, timestep_guidance_channels: int = 32):
    """Flux2KleinPipeline at 64x64 px: a Qwen3 text encoder with 27 layers (the pipeline stacks
    hidden states 9, 18, 27), hidden 16, no guidance embedding (Klein uses true CFG; the
    step-distilled variant none); timestep_guidance_channels as for `tiny_flux2_pipeline`."""
    from diffusers import Flux2KleinPipeline

    tok = tiny_qwen3_tokenizer()
    text_encoder = tiny_qwen3(seed + 2, len(tok), tok.pad_token_id, num_layers=27)
    return Flux2KleinPipeline(scheduler=_flux2_scheduler(), vae=tiny_flux2_vae(seed + 1), text_encoder=text_encoder,
                              tokenizer=tok, transformer=_flux2_transformer(seed, 3 * 16, guidance_embeds=False,
                                                                            timestep_guidance_channels=timestep_guidance_channels),
                              is_distilled=is_distilled)


def tiny_z_image_pipeline(tmp: Path, seed: int = 0, n_layers: int = 1, dim: int = 64):
    """ZImagePipeline at 64x64 px (8x8 latents, 16 tokens of 2x2 patches): one main layer and one
    noise / context refiner layer each, a 2-layer Qwen3 text encoder (the pipeline takes the
    second-to-last hidden state), the tiny 16-channel VAE. dim: the width, in heads of 32 (ComfyUI's
    NextDiT needs dim >= 1024 for Z-Image's 256-wide time embedding and 8/3 dim a multiple of 256)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    tok = tiny_qwen3_tokenizer()
    text_encoder = tiny_qwen3(seed + 2, len(tok), tok.pad_token_id, num_layers=2)
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=dim, n_layers=n_layers, n_refiner_layers=1,
        n_heads=dim // 32, n_kv_heads=dim // 32, cap_feat_dim=16, axes_dims=[8, 12, 12], axes_lens=[256, 64, 64],
    )
    reinit_weights(transformer, seed)
    # Z-Image-Turbo's scheduler: a constant shift of 3.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    return ZImagePipeline(scheduler=scheduler, vae=tiny_vae(0.3611, 0.1159, seed + 1), text_encoder=text_encoder,
                          tokenizer=tok, transformer=transformer.eval())


# --- Wan 2.1 / 2.2, Lumina 2 ----------------------------------------------------------------------


def tiny_umt5(seed: int, vocab_size: int, d_model: int = 16):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=32, num_layers=1,
                                       num_heads=2, pad_token_id=1, eos_token_id=1, decoder_start_token_id=1)).eval()


def tiny_wan_pipeline(tmp: Path, seed: int = 0, num_layers: int = 2, wan22_5b: bool = False):
    """WanPipeline making one 64x64 frame: a UMT5 encoder (d_model 16), a Wan transformer
    (2 heads of 16) and a narrow Wan 2.1 VAE (16 channels, 8x), with a FlowMatch Euler scheduler
    (Wan ships UniPC in flow mode; the Euler one lets the pipeline's own sampling match FDFO's solver).
    wan22_5b: the Wan 2.2 TI2V-5B layout: 48 latent channels, the residual 16x VAE, one timestep
    per latent patch (`expand_timesteps`)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    tok = tiny_clip_tokenizer(tmp / "tok")
    channels = 48 if wan22_5b else 16
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=channels,
        out_channels=channels, text_dim=16, freq_dim=32, ffn_dim=64, num_layers=num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64,
    )
    reinit_weights(transformer, seed)
    torch.manual_seed(seed + 1)
    if wan22_5b:
        g = torch.Generator().manual_seed(seed + 1)
        vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                               temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                               out_channels=12, patch_size=2, scale_factor_spatial=16,
                               latents_mean=(torch.randn(48, generator=g) * 0.1).tolist(),
                               latents_std=(torch.rand(48, generator=g) + 0.5).tolist()).eval()
    else:
        vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                               temperal_downsample=[False, True, True]).eval()
    # Wan's flow shift (3.0 for 480p) on diffusers' Euler flow scheduler.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return WanPipeline(tokenizer=tok, text_encoder=tiny_umt5(seed + 2, len(tok)), vae=vae, scheduler=scheduler,
                       transformer=transformer.eval(), expand_timesteps=wan22_5b)


def tiny_lumina2_pipeline(tmp: Path, seed: int = 0, num_layers: int = 1, num_refiner_layers: int = 1):
    """Lumina2Pipeline at 64x64 px: a 2-layer Gemma-2 text encoder (hidden 32; the pipeline reads the
    second-to-last hidden state) with a byte-level tokenizer, a Lumina 2 transformer of width 64 with
    grouped-query attention (4 query heads, 2 key / value heads: unequal parts of ComfyUI's fused
    qkv), the Flux-style 16-channel VAE, shift 6. The system prompt is shortened (one token per
    byte) so that prompts fit in the case's 48 tokens."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tok = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, hidden_size=64, num_layers=num_layers,
        num_refiner_layers=num_refiner_layers, num_attention_heads=4, num_kv_heads=2, multiple_of=16,
        axes_dim_rope=(4, 6, 6), axes_lens=(300, 512, 512), cap_feat_dim=32,
    )
    reinit_weights(transformer, seed)
    torch.manual_seed(seed + 2)
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        bos_token_id=None, eos_token_id=tok.eos_token_id,
    )).eval()
    pipe = Lumina2Pipeline(transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=6.0),
                           vae=tiny_vae(0.3611, 0.1159, seed + 1), text_encoder=text_encoder, tokenizer=tok)
    pipe.system_prompt = "Draw:"
    return pipe


def tiny_hunyuan_image_pipeline(tmp: Path, seed: int = 0, num_layers: int = 1, num_single_layers: int = 1):
    """HunyuanImagePipeline at 128x128 px (4x4 latents of 64 channels, 32x VAE): a 3-layer Qwen2.5-VL
    text encoder (hidden 32, the pipeline reads the third-to-last hidden state) with a byte-level
    tokenizer, a ByT5 glyph encoder of the true width (1472: ComfyUI's byt5_in hard-codes it) and one
    layer, a transformer of width 32 (2 heads of 16) with the two text-refiner blocks ComfyUI
    hard-codes, and a narrow HunyuanImage VAE; shift 5, no guider (no CFG)."""
    from diffusers import (
        AutoencoderKLHunyuanImage,
        FlowMatchEulerDiscreteScheduler,
        HunyuanImagePipeline,
        HunyuanImageTransformer2DModel,
    )
    from transformers import ByT5Tokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, T5Config, T5EncoderModel

    tok = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = HunyuanImageTransformer2DModel(
        in_channels=64, out_channels=64, num_attention_heads=2, attention_head_dim=16, num_layers=num_layers,
        num_single_layers=num_single_layers, num_refiner_layers=2, patch_size=(1, 1), text_embed_dim=32,
        text_embed_2_dim=1472, rope_axes_dim=(8, 8), rope_theta=256.0,
    )
    reinit_weights(transformer, seed)
    torch.manual_seed(seed + 2)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           patch_size=2, spatial_merge_size=1, temporal_patch_size=1, fullatt_block_indexes=[0]),
    )).eval()
    byt5_tok = ByT5Tokenizer()
    torch.manual_seed(seed + 3)
    byt5 = T5EncoderModel(T5Config(vocab_size=len(byt5_tok), d_model=1472, d_kv=8, d_ff=32, num_layers=1,
                                   num_heads=2)).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLHunyuanImage(in_channels=3, out_channels=3, latent_channels=64,
                                    block_out_channels=(32, 32, 32, 32, 32, 128), layers_per_block=1,
                                    spatial_compression_ratio=32, sample_size=128, scaling_factor=0.75289).eval()
    # The random decoder's last GroupNorm makes every image equally bright, whatever the latent (the
    # brightness reward could not move): drop it and scale the output to a spread of about 0.3.
    vae.decoder.norm_out = torch.nn.Identity()
    with torch.no_grad():
        vae.decoder.conv_out.bias.zero_()
        z = torch.randn(16, 64, 2, 2, generator=torch.Generator().manual_seed(seed))
        vae.decoder.conv_out.weight.mul_(0.3 / vae.decode(z).sample.std())
    pipe = HunyuanImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), vae=vae, text_encoder=text_encoder,
                                tokenizer=tok, text_encoder_2=byt5, tokenizer_2=byt5_tok, transformer=transformer.eval())
    # The pipeline drops the chat template's system prefix by token count (34 for Qwen's tokenizer).
    prefix = pipe.prompt_template_encode.split("{}")[0]
    pipe.prompt_template_encode_start_idx = len(tok(prefix).input_ids)
    pipe.tokenizer_max_length = 24  # what its __call__ uses (no max_sequence_length argument)
    return pipe
