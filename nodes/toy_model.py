"""The bundled toy model as standard ComfyUI MODEL, CLIP and VAE objects.

- diffusion model and VAE: the shipped weights through ComfyUI's own loading code
  (`comfy.sd.load_diffusion_model_state_dict`, `comfy.sd.VAE`), exactly what UNETLoader and
  VAELoader build from the exported files (`fdfo_core.toy.comfy_export`);
- text encoder: a real `comfy.sd.CLIP` whose tokenizer and text model are the toy's two tiny
  CLIPs, so the stock CLIPTextEncode node produces the toy's conditioning
  `[[prompt_embeds, {"pooled_output": pooled}]]` (`fdfo_core.toy.encode_toy_prompts`).

Only torch, transformers and safetensors are needed (no diffusers), as in any ComfyUI install.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
import torch

from ..fdfo_core.files.text_files import read_json_file
from ..fdfo_core.toy.comfy_export import comfyui_state_dicts
from ..fdfo_core.toy.model import TOY_MAX_SEQUENCE_LENGTH, default_toy_model_path, encode_toy_prompts

#: Overrides the shipped toy folder (tests, or a toy rebuilt with `python -m fdfo_core.cli.toy_pretrain`).
TOY_MODEL_ENV = "FDFO_TOY_MODEL"
_TOKEN_KEYS = ("l", "g")  # the SD3 names of the two CLIPs, as ComfyUI's SD3 tokenizer uses them


def toy_model_dir(path: str | os.PathLike | None = None) -> Path:
    """The toy pipeline folder: `path`, else $FDFO_TOY_MODEL, else the shipped weights."""
    chosen = path or os.environ.get(TOY_MODEL_ENV)
    if chosen:
        folder = Path(chosen).expanduser()
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"{folder} is not a toy model folder (no model_index.json)")
        return folder
    return default_toy_model_path()


class _FixedIds:
    """A stand-in tokenizer for `encode_toy_prompts` that returns ids tokenized earlier."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids
        self.model_max_length = ids.shape[1]

    def __call__(self, *args, **kwargs):
        return SimpleNamespace(input_ids=self.ids)


class ToyTokenizer:
    """ComfyUI tokenizer interface over the toy's two CLIP tokenizers (prompt weights are ignored)."""

    def __init__(self, embedding_directory=None, tokenizer_data=None):
        from transformers import CLIPTokenizer

        folder = Path((tokenizer_data or {})["fdfo_toy_dir"])
        self.tokenizers = [CLIPTokenizer.from_pretrained(str(folder / name)) for name in ("tokenizer", "tokenizer_2")]

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
        out = {}
        for key, tok in zip(_TOKEN_KEYS, self.tokenizers):
            ids = tok([text], padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids[0]
            out[key] = [[(i, 1.0, 0) if return_word_ids else (i, 1.0) for i in ids]]
        return out

    def untokenize(self, token_weight_pair):
        tok = self.tokenizers[0]
        return [(t, tok.convert_ids_to_tokens(t[0])) for t in token_weight_pair]

    def state_dict(self):
        return {}


class ToyTextEncoder(torch.nn.Module):
    """ComfyUI text model (`CLIP.cond_stage_model`) running the toy's two tiny CLIPs in float32."""

    def __init__(self, model_dir: str, joint_attention_dim: int, device="cpu", dtype=None, model_options=None):
        super().__init__()
        from transformers import CLIPTextModelWithProjection

        folder = Path(model_dir)
        self.text_encoder = CLIPTextModelWithProjection.from_pretrained(str(folder / "text_encoder")).float().eval()
        self.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(str(folder / "text_encoder_2")).float().eval()
        self.requires_grad_(False)
        self.joint_attention_dim = joint_attention_dim
        self.dtypes = {torch.float32}
        self.to(device)

    def reset_clip_options(self):
        pass

    def set_clip_options(self, options):
        pass

    def encode_token_weights(self, token_weight_pairs):
        device = next(self.parameters()).device
        ids = [torch.tensor([[t[0] for t in token_weight_pairs[key][0]]], device=device) for key in _TOKEN_KEYS]
        cond, pooled = encode_toy_prompts(
            [self.text_encoder, self.text_encoder_2], [_FixedIds(i) for i in ids], [""],
            max_sequence_length=TOY_MAX_SEQUENCE_LENGTH, joint_attention_dim=self.joint_attention_dim, device=device,
        )
        return cond.float(), pooled.float()

    def load_sd(self, sd):
        return self.load_state_dict(sd, strict=False)


def load_toy_clip(folder: Path):
    import comfy.sd

    config = read_json_file(folder / "transformer" / "config.json", "transformer config")
    target = SimpleNamespace(
        params={"model_dir": str(folder), "joint_attention_dim": int(config["joint_attention_dim"])},
        clip=ToyTextEncoder,
        tokenizer=ToyTokenizer,
    )
    return comfy.sd.CLIP(target=target, tokenizer_data={"fdfo_toy_dir": str(folder)}, model_options={"dtype": torch.float32})


def load_toy_model(path: str | os.PathLike | None = None) -> tuple:
    """(MODEL, CLIP, VAE) of the toy model, built by ComfyUI's own loaders."""
    import comfy.sd

    folder = toy_model_dir(path)
    transformer_sd, vae_sd = comfyui_state_dicts(folder)
    model = comfy.sd.load_diffusion_model_state_dict(transformer_sd)
    if model is None:
        raise RuntimeError(f"ComfyUI did not recognise the toy diffusion model in {folder}")
    vae = comfy.sd.VAE(sd=vae_sd)
    clip = load_toy_clip(folder)
    return model, clip, vae
