"""Run with ComfyUI's python: ComfyUI loads the toy model and samples it exactly like diffusers.

    <comfyui python> tests/comfy_scripts/toy_check.py --comfyui-root /path/to/ComfyUI [--model DIR]

It lives on the ComfyUI side of the project (fdfo_core never imports ComfyUI; tests/test_layering.py
keeps it so). Run with ComfyUI's interpreter (it needs ComfyUI's dependencies plus diffusers and
transformers); the pytest wrapper is tests/test_toy_comfyui.py.
Exports the ComfyUI files, loads them with `comfy.sd.load_diffusion_model` (what UNETLoader calls)
and `comfy.sd.VAE` (what VAELoader calls), samples the same noise and conditioning with ComfyUI's
Euler sampler and with the diffusers pipeline on the same sigmas, and prints one JSON line with
the differences. Exit status 0 when they match within `--atol`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _import_comfy(root: Path):
    sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    try:  # ComfyUI's own start-up imports this before `nodes`; harmless when absent.
        import utils.install_util  # noqa: F401
    except ImportError:
        pass
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.utils

    return comfy


def run_check(comfyui_root: Path, model_path: Path | None, steps: int, guidance: float, atol: float) -> dict:
    import torch

    comfy = _import_comfy(comfyui_root)
    from fdfo_core.toy.comfy_export import export_comfyui_files
    from fdfo_core.toy.model import SD3_SCALING_FACTOR, SD3_SHIFT_FACTOR, encode_toy_prompts, load_toy_pipeline

    torch.manual_seed(0)
    prompts = ["two red circles above a blue square on a yellow background", "three green triangles on a white background"]
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = export_comfyui_files(tmp, model_path)
        model = comfy.sd.load_diffusion_model(str(files.diffusion_model))
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(files.vae)))
    base = model.model
    result["comfy_model"] = type(base.model_config).__name__
    result["comfy_latent_format"] = type(base.latent_format).__name__
    result["comfy_shift"] = float(base.model_sampling.shift)
    result["comfy_vae"] = type(vae.first_stage_model).__name__
    result["comfy_vae_latent_channels"] = int(vae.latent_channels)

    pipe = load_toy_pipeline(model_path)
    encoders = [pipe.text_encoder, pipe.text_encoder_2]
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2]
    dim = pipe.transformer.config.joint_attention_dim
    cond, pooled = encode_toy_prompts(encoders, tokenizers, prompts, joint_attention_dim=dim)
    uncond, upooled = encode_toy_prompts(encoders, tokenizers, [""] * len(prompts), joint_attention_dim=dim)

    noise = torch.randn(len(prompts), 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lat_d = pipe(
            prompt_embeds=cond,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=uncond,
            negative_pooled_prompt_embeds=upooled,
            latents=noise.clone(),
            num_inference_steps=steps,
            guidance_scale=guidance,
            output_type="latent",
        ).images
        raw_d = lat_d / SD3_SCALING_FACTOR + SD3_SHIFT_FACTOR
        img_d = (pipe.vae.decode(raw_d).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    sigmas = pipe.scheduler.sigmas.clone().float()

    positive = [[cond, {"pooled_output": pooled}]]
    negative = [[uncond, {"pooled_output": upooled}]]
    raw_c = comfy.sample.sample_custom(
        model,
        noise.clone(),
        guidance,
        comfy.samplers.sampler_object("euler"),
        sigmas,
        positive,
        negative,
        torch.zeros_like(noise),
        disable_pbar=True,
        seed=0,
    ).float()
    img_c = vae.decode(raw_c).float()[..., :3]
    result["latent_max_abs_diff"] = float((raw_c - raw_d).abs().max())
    result["image_max_abs_diff"] = float((img_c - img_d).abs().max())
    result["image_shape"] = list(img_c.shape)
    # The plain KSampler path (euler / simple) also runs; its sigmas differ slightly from diffusers'.
    ks = comfy.sample.sample(model, noise.clone(), steps, guidance, "euler", "simple", positive, negative, torch.zeros_like(noise), disable_pbar=True, seed=0)
    result["ksampler_vs_diffusers_image_max_abs_diff"] = float((vae.decode(ks).float()[..., :3] - img_d).abs().max())
    result["match"] = result["latent_max_abs_diff"] < atol and result["image_max_abs_diff"] < atol
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui-root", required=True, type=Path)
    p.add_argument("--model", type=Path, help="toy pipeline folder (default: the shipped one)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--atol", type=float, default=2e-3)
    a = p.parse_args(argv)
    result = run_check(a.comfyui_root.resolve(), a.model, a.steps, a.guidance, a.atol)
    print("COMFYUI_CHECK " + json.dumps(result), flush=True)
    return 0 if result["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
