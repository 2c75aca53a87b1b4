"""ComfyUI-loadable files made from the shipped diffusers folder (nothing is stored twice).

- diffusion model: the diffusers `SD3Transformer2DModel` weights as they are; ComfyUI's
  `UNETLoader` / `comfy.sd.load_diffusion_model` recognises diffusers MMDiT keys and detects the
  tiny shape (hidden 64 x depth, depth heads, 16 latent channels). ComfyUI samples it with its SD3
  defaults: latent format SD3 (scale 1.5305, shift 0.0609) and flow shift 3.0, as trained.
- VAE: the AutoencoderTiny weights renamed to ComfyUI's TAESD keys (`encoder.layers.N` ->
  `taesd_encoder.N`, `decoder.layers.N` -> `taesd_decoder.(N+1)` because ComfyUI's decoder starts
  with its Clamp module), plus `vae_scale` 1.0 and `vae_shift` 0.0: the SD3 latent format already
  undoes the scale and shift before the VAE sees the latent.
- text: ComfyUI has no loader for tiny CLIPs; build conditioning with `encode_toy_prompts` as
  `[[prompt_embeds, {"pooled_output": pooled}]]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import default_toy_model_path

_TRANSFORMER_FILE = "transformer/diffusion_pytorch_model.safetensors"
_VAE_FILE = "vae/diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class ComfyUIFiles:
    diffusion_model: Path  # for UNETLoader (models/diffusion_models/)
    vae: Path  # for VAELoader (models/vae/)


def diffusers_taesd_to_comfyui(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers AutoencoderTiny state dict to ComfyUI's TAESD keys (with vae_scale / vae_shift)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$", key)
        if m is None:
            raise ValueError(f"unexpected AutoencoderTiny key {key!r}: expected encoder.layers.N.* or decoder.layers.N.*")
        part, index, rest = m.groups()
        index = int(index) + (1 if part == "decoder" else 0)
        out[f"taesd_{part}.{index}.{rest}"] = value
    dtype = next(iter(state_dict.values())).dtype
    out["vae_scale"] = torch.tensor(1.0, dtype=dtype)
    out["vae_shift"] = torch.tensor(0.0, dtype=dtype)
    return out


def comfyui_state_dicts(model_path: str | Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(diffusion model state dict, VAE state dict) for `comfy.sd.load_diffusion_model_state_dict`
    and `comfy.sd.VAE(sd=...)`, read from the toy pipeline folder (default: the shipped one)."""
    from safetensors.torch import load_file

    root = Path(model_path) if model_path is not None else default_toy_model_path()
    transformer = load_file(str(root / _TRANSFORMER_FILE))
    vae = diffusers_taesd_to_comfyui(load_file(str(root / _VAE_FILE)))
    return transformer, vae


def export_comfyui_files(
    models_dir: str | Path, model_path: str | Path | None = None, name: str = "fdfo_toy_sd3"
) -> ComfyUIFiles:
    """Write `<models_dir>/diffusion_models/<name>.safetensors` and `<models_dir>/vae/<name>_taesd.safetensors`.

    Pass ComfyUI's `models` folder to install them for `UNETLoader` and `VAELoader`.
    """
    from safetensors.torch import save_file

    transformer, vae = comfyui_state_dicts(model_path)
    models_dir = Path(models_dir)
    files = ComfyUIFiles(models_dir / "diffusion_models" / f"{name}.safetensors", models_dir / "vae" / f"{name}_taesd.safetensors")
    meta = {"source": "comfyui-fdfo toy SD3 model (fdfo_core/toy)"}
    for path, sd in ((files.diffusion_model, transformer), (files.vae, vae)):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=meta)
    return files
