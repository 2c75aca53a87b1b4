"""Tiny diffusers pipelines of the 2026 families, part a (issue 26): Krea 2, ERNIE-Image,
Kandinsky 5 (image), LongCat-Image, Qwen-Image 2.1. Random weights, built from configs, CPU.

Their text encoders read a Qwen-style chat template whose system prefix the pipelines drop by a
hard-coded token count (Krea 2: 34 prefix and 5 suffix tokens, Kandinsky 5: 40): the tokenizer here
is a byte-level BPE trained on the templates' words, so each word is one token as in Qwen's own
tokenizer and those counts hold without patching the pipelines (the pipelines then save and load
as they are). Any other text still tokenizes (one token per byte).
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import torch

from tiny_pipelines import reinit_weights, tiny_clip_tokenizer, tiny_flux2_vae

#: The chat templates the pipelines wrap prompts in, and the test prompts: their words become tokens.
TEMPLATE_TEXTS = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n",
    "<|im_start|>system\nYou are a prompt engineer. Describe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n",
    "<|im_start|>system\nAs an image captioning expert, generate a descriptive text prompt based on an image content, "
    "suitable for input to a text-to-image model.<|im_end|>\n<|im_start|>user\n",
    "<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nComprehend and analyze the provided prompt.<|im_end|>\n",
    "a red circle", "two blue squares", "a green triangle",
)

#: Qwen's special tokens (single tokens in Qwen's tokenizers).
QWEN_SPECIAL = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def tiny_word_qwen_tokenizer():
    """A Qwen2 byte-level BPE tokenizer whose merges make every word of `TEMPLATE_TEXTS` one token
    (with its leading space, as Qwen's does): the templates' token counts equal those of Qwen's own
    tokenizer (Krea 2's prefix 34, suffix 5; Kandinsky 5's prefix 40)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    words = sorted({w for text in TEMPLATE_TEXTS for w in re.findall(r" ?[A-Za-z]+", text)})
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(words, trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    vocab["<|endoftext|>"] = len(vocab)
    for special in QWEN_SPECIAL:
        vocab[special] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL)})
    return tok


def tiny_qwen_image_vae(seed: int):
    """AutoencoderKLQwenImage (Wan 2.1 layout, 16 channels, 8x), 8 channels wide, with latents_mean /
    latents_std of the published model (the pipelines de-normalise with them)."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                  temperal_downsample=[False, True, True]).eval()


# --- Krea 2 -----------------------------------------------------------------------------------------


def tiny_qwen3_vl_model(seed: int, vocab_size: int, pad_token_id: int, num_layers: int, hidden: int = 16,
                        for_generation: bool = False):
    """Qwen3VLModel (or ...ForConditionalGeneration), text hidden `hidden`, one tiny vision block."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLModel

    torch.manual_seed(seed)
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=hidden // 2, max_position_embeddings=4096, pad_token_id=pad_token_id,
                         rope_parameters={"rope_theta": 10000.0, "rope_type": "default",
                                          "mrope_section": [1, 1, 2], "mrope_interleaved": True}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden,
                           patch_size=2, spatial_merge_size=1, temporal_patch_size=1, num_position_embeddings=16,
                           deepstack_visual_indexes=[]),
    )
    return (Qwen3VLForConditionalGeneration if for_generation else Qwen3VLModel)(config).eval()


def tiny_krea2_pipeline(tmp: Path, seed: int = 0, num_layers: int = 1, is_distilled: bool = False):
    """Krea2Pipeline at 64x64 px (8x8 latents, 16 tokens of 2x2 patches): a 3-layer Qwen3-VL text
    encoder whose hidden states 1, 2, 3 are stacked per token (4-D text features), one text-fusion
    block of each kind, `num_layers` single-stream blocks with grouped-query attention."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Krea2Pipeline, Krea2Transformer2DModel

    tok = tiny_word_qwen_tokenizer()
    text_encoder = tiny_qwen3_vl_model(seed + 2, len(tok), tok.pad_token_id, num_layers=3)
    torch.manual_seed(seed)
    transformer = Krea2Transformer2DModel(
        in_channels=64, num_layers=num_layers, attention_head_dim=16, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, timestep_embed_dim=32, text_hidden_dim=16, num_text_layers=3,
        text_num_attention_heads=2, text_num_key_value_heads=2, text_intermediate_size=32,
        num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 6, 6),
    )
    reinit_weights(transformer, seed)
    # Krea 2's scheduler: the resolution-aware exponential time shift.
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=6400, time_shift_type="exponential",
    )
    return Krea2Pipeline(scheduler=scheduler, vae=tiny_qwen_image_vae(seed + 1), text_encoder=text_encoder,
                         tokenizer=tok, transformer=transformer.eval(), text_encoder_select_layers=(1, 2, 3),
                         is_distilled=is_distilled)


# --- LongCat-Image -----------------------------------------------------------------------------------


def _identity(x):
    return x


def tiny_kl_vae(seed: int, scaling_factor: float, shift_factor: float | None, latent_channels: int = 16):
    """diffusers AutoencoderKL (8x, `latent_channels`), 8 channels wide (pipelines that read its
    `block_out_channels`), its decoder calibrated like `tiny_pipelines.tiny_vae`: the last GroupNorm,
    which makes every random image equally bright, is skipped and the output scaled to a spread
    of about 0.3 around mid-grey."""
    from diffusers import AutoencoderKL

    from fdfo_core.families.published import SMALL_KL_VAE_CONFIG

    torch.manual_seed(seed)
    config = {**SMALL_KL_VAE_CONFIG, "latent_channels": latent_channels, "scaling_factor": scaling_factor,
              "shift_factor": shift_factor}
    vae = AutoencoderKL(**config)
    reinit_weights(vae, seed, gain=1.2)
    # (skipped, not removed: its parameters stay, so the VAE saves and loads; a loaded copy normalises again)
    vae.decoder.conv_norm_out.forward = _identity
    with torch.no_grad():
        out = vae.decoder.conv_out
        out.bias.zero_()
        z = torch.randn(8, latent_channels, 8, 8, generator=torch.Generator().manual_seed(seed))
        out.weight.mul_(0.6 / vae.decode(z).sample.std())
    return vae.eval()


def tiny_qwen25_vl(seed: int, vocab_size: int, eos_token_id: int, pad_token_id: int, hidden: int = 32,
                   num_layers: int = 1):
    """Qwen2_5_VLForConditionalGeneration, text hidden `hidden`, one tiny vision block."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=4096, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         bos_token_id=None, eos_token_id=eos_token_id, pad_token_id=pad_token_id),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden,
                           patch_size=2, spatial_merge_size=1, temporal_patch_size=1, fullatt_block_indexes=[0]),
    )).eval()


def tiny_longcat_image_pipeline(tmp: Path, seed: int = 0, num_layers: int = 1, num_single_layers: int = 1):
    """LongCatImagePipeline at 64x64 px (8x8 latents, 16 tokens of 2x2 patches): a 1-layer Qwen2.5-VL
    text encoder (hidden 32) reading the pipeline's fixed 512 text tokens, a Flux-layout transformer
    (one double and one single block, 16 wide), the 16-channel KL VAE. No `text_processor`: it only
    serves the prompt rewriting, which FDFO never runs."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LongCatImagePipeline, LongCatImageTransformer2DModel

    tok = tiny_word_qwen_tokenizer()
    text_encoder = tiny_qwen25_vl(seed + 2, len(tok), tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(seed)
    transformer = LongCatImageTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=num_layers, num_single_layers=num_single_layers, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(2, 2, 4),
    )
    reinit_weights(transformer, seed)
    # LongCat-Image's scheduler: Flux's resolution-dependent shift.
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return LongCatImagePipeline(scheduler=scheduler, vae=tiny_kl_vae(seed + 1, 0.3611, 0.1159),
                                text_encoder=text_encoder, tokenizer=tok, text_processor=None,
                                transformer=transformer.eval())


# --- ERNIE-Image -------------------------------------------------------------------------------------


def tiny_mistral3_model(seed: int, vocab_size: int, pad_token_id: int, num_layers: int = 2, hidden: int = 16):
    """Mistral3Model (ERNIE-Image's text encoder: the hidden states, no LM head), text hidden `hidden`."""
    from transformers import Mistral3Config, Mistral3Model

    torch.manual_seed(seed)
    return Mistral3Model(Mistral3Config(
        text_config=dict(model_type="mistral", vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=hidden // 2, max_position_embeddings=4096, pad_token_id=pad_token_id),
        vision_config=dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, head_dim=8, patch_size=4, image_size=32),
        spatial_merge_size=1,
    )).eval()


def tiny_ernie_image_pipeline(tmp: Path, seed: int = 0, num_layers: int = 1):
    """ErnieImagePipeline at 64x64 px (4x4 tokens of 2x2-patched 32-channel latents, 16 px cells): a
    2-layer Mistral3 text encoder (the pipeline reads the second-to-last hidden state), one shared-AdaLN
    block 32 wide, the Flux.2 VAE (batch-norm statistics away from (0, 1)); no prompt enhancer."""
    from diffusers import ErnieImagePipeline, ErnieImageTransformer2DModel, FlowMatchEulerDiscreteScheduler

    tok = tiny_word_qwen_tokenizer()
    text_encoder = tiny_mistral3_model(seed + 2, len(tok), tok.pad_token_id)
    torch.manual_seed(seed)
    transformer = ErnieImageTransformer2DModel(
        hidden_size=32, num_attention_heads=2, num_layers=num_layers, ffn_hidden_size=64, in_channels=128,
        out_channels=128, patch_size=1, text_in_dim=16, rope_axes_dim=(4, 6, 6),
    )
    reinit_weights(transformer, seed)  # (also the AdaLN and output layers, which the library zero-initialises)
    return ErnieImagePipeline(transformer=transformer.eval(), vae=tiny_flux2_vae(seed + 1), text_encoder=text_encoder,
                              tokenizer=tok, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), pe=None,
                              pe_tokenizer=None)


# --- Kandinsky 5 (image) -----------------------------------------------------------------------------


def tiny_kandinsky5_t2i_pipeline(tmp: Path, seed: int = 0, num_visual_blocks: int = 1):
    """Kandinsky5T2IPipeline at 64x64 px (8x8 channel-last latents, 16 tokens of 2x2 patches): a 1-layer
    Qwen2.5-VL (hidden 32; its tokenizer stands in for the Qwen2-VL processor, which text-to-image
    calls with text only) and a CLIP text model (pooled, 77 positions), one text and `num_visual_blocks`
    visual blocks 32 wide, the KL VAE with Flux's scaling and a shift factor the pipeline ignores.
    The pipeline replaces any size outside its list `resolutions` (1024 px class): the list is set
    to 64 px sizes here (an attribute, not saved)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5T2IPipeline, Kandinsky5Transformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = tiny_word_qwen_tokenizer()
    text_encoder = tiny_qwen25_vl(seed + 2, len(tok), tok.eos_token_id, tok.pad_token_id)
    clip_tok = tiny_clip_tokenizer(tmp / "clip_tok")
    torch.manual_seed(seed + 3)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    torch.manual_seed(seed)
    transformer = Kandinsky5Transformer3DModel(
        in_visual_dim=16, in_text_dim=32, in_text_dim2=16, time_dim=32, out_visual_dim=16, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=num_visual_blocks, axes_dims=(4, 6, 6),
    )
    reinit_weights(transformer, seed)  # (also the modulations, which the library zero-initialises)
    pipe = Kandinsky5T2IPipeline(
        transformer=transformer.eval(), vae=tiny_kl_vae(seed + 1, 0.3611, 0.1159), text_encoder=text_encoder,
        tokenizer=tok, text_encoder_2=clip, tokenizer_2=clip_tok, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    pipe.resolutions = [(64, 64), (96, 64), (64, 96)]
    pipe.prepare_latents = types.MethodType(_channel_first_noise, pipe)
    return pipe


def _channel_first_noise(pipe, batch_size, num_channels_latents=16, height=1024, width=1024, dtype=None, device=None,
                         generator=None, latents=None):
    """Kandinsky5T2IPipeline.prepare_latents drawing each image's noise as [C, h, w], as FDFO's sampler
    does, then laying it out channel-last as the pipeline's own: the same seed then gives both the same
    starting noise, so their denoising can be compared (the pipeline draws [1, h, w, C] directly)."""
    if latents is not None:
        return latents.to(device=device, dtype=dtype)
    f = pipe.vae_scale_factor_spatial
    gens = generator if isinstance(generator, list) else [generator] * batch_size
    noise = torch.stack([torch.randn(num_channels_latents, height // f, width // f, generator=g) for g in gens])
    return noise.permute(0, 2, 3, 1).unsqueeze(1).to(device=device, dtype=dtype)


# --- Qwen-Image 2.1 ----------------------------------------------------------------------------------

#: A Qwen3-VL-style chat template over content lists (the pipeline tokenizes its system message
#: through the processor's template to count the tokens it drops).
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen_image21_vae(seed: int, z_dim: int = 16):
    """AutoencoderKLQwenImage21 (16x, RGBA in and out), 8 channels wide, `z_dim` latent channels with
    latents_mean / latents_std away from (0, 1); the decoder's output is scaled so that colour and
    alpha vary without saturating."""
    from diffusers import AutoencoderKLQwenImage21

    g = torch.Generator().manual_seed(seed)
    mean = (torch.randn(z_dim, generator=g) * 0.3).tolist()
    std = (torch.rand(z_dim, generator=g) + 0.5).tolist()
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage21(base_dim=8, decoder_base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1, 1],
                                   num_res_blocks=1, temperal_downsample=[False, True, True, True],
                                   latents_mean=mean, latents_std=std).eval()
    with torch.no_grad():
        conv = vae.decoder.conv_out
        z = torch.randn(4, z_dim, 1, 4, 4, generator=g)
        conv.weight.mul_(0.5 / vae.decode(z).sample.std())
    return vae


def tiny_qwen_image21_pipeline(tmp: Path, seed: int = 0, num_layers: int = 1):
    """QwenImage21Pipeline at 64x64 px (4x4 latent cells of the 16x VAE, one token each): a 2-layer
    Qwen3-VL text encoder (hidden 16) behind a real Qwen3VLProcessor, which needs torchvision (its
    video processor): the test is skipped without it. One block-causal single-stream block."""
    import pytest

    pytest.importorskip("torchvision", reason="needs torchvision (Qwen-Image 2.1's Qwen3VLProcessor)")
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImage21Pipeline, QwenImage21Transformer2DModel
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tok = tiny_word_qwen_tokenizer()
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                                 video_processor=Qwen3VLVideoProcessor(), chat_template=QWEN3_VL_CHAT_TEMPLATE)
    text_encoder = tiny_qwen3_vl_model(seed + 2, len(tok), tok.pad_token_id, num_layers=2, for_generation=True)
    torch.manual_seed(seed)
    transformer = QwenImage21Transformer2DModel(
        patch_size=1, in_channels=16, out_channels=16, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=2, context_in_dim=16, mlp_ratio=2, axes_dims_rope=(4, 6, 6),
    )
    reinit_weights(transformer, seed)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    )
    return QwenImage21Pipeline(scheduler=scheduler, vae=tiny_qwen_image21_vae(seed + 1), text_encoder=text_encoder,
                               processor=processor, transformer=transformer.eval())


def composite_over_white(rgba: torch.Tensor) -> torch.Tensor:
    """[B, 4, H, W] RGBA in [0, 1] -> [B, 3, H, W] RGB over a white background."""
    return rgba[:, :3] * rgba[:, 3:4] + (1 - rgba[:, 3:4])
