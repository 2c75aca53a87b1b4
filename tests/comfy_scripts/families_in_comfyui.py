"""Run with ComfyUI's python: the ComfyUI half of the family harness (tests/test_families.py).

    <comfyui python> tests/comfy_scripts/families_in_comfyui.py COMFYUI_ROOT WORK_DIR CASE_ID ...

For each case, WORK_DIR/<case> holds what the pytest side wrote with the project's diffusers
(`family_harness.prepare_comfy_inputs`): the tiny transformer's diffusers weights and config, a
LoRA file from the diffusers backend, one written with a deliberately wrong key map, probe
inputs, each prompt's ComfyUI conditioning and the diffusers velocities. This script builds the
transformer in ComfyUI from those weights with ComfyUI's own converter (`FamilyCase.comfy`) and
prints one line `RESULT {"case", "check", "ok", ...figures}` per check:

- recognised: the ComfyUI backend takes the MODEL as the case's family;
- base_velocity: ComfyUI's velocity = the diffusers family's velocity call (no LoRA);
- manual_merge: our file merged by hand, W += (alpha / r) up @ down, into ComfyUI's own weights
  gives the diffusers backend's hot velocity (the key map and the strength are right);
- wrong_map_fails: the same with the wrongly mapped file is far off (the check can fail);
- stock_loader: LoraLoaderModelOnly loads the file with no "lora key not loaded" line and gives
  the hot velocity;
- strength: the same loader at strength 0.5 gives the hand merge at half the update (and not the
  full-strength velocity);
- comfy_lora: the ComfyUI backend's own adapter (random weights) writes comfy_lora.safetensors
  and its hot velocity (comfy_velocity.pt) for the pytest side to load into diffusers; the file
  through LoraLoaderModelOnly gives that velocity;
- trainer_node: the FDFO Trainer node trains a few epochs; its hot MODEL and its file through
  LoraLoaderModelOnly sample the same latents (KSampler's Euler), no key is left unloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import traceback
from pathlib import Path

comfy_root, work, case_ids = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, comfy_root)
sys.path.insert(0, str(REPO / "tests"))
sys.argv = [sys.argv[0], "--cpu"]

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("FDFO_TEST_THREADS", "1")))

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
try:
    import utils.install_util  # noqa: E402,F401  (ComfyUI's start-up imports it before `nodes`)
except ImportError:
    pass
import folder_paths  # noqa: E402

folder_paths.set_output_directory(str(work / "output"))
folder_paths.set_temp_directory(str(work / "temp"))
LORAS = work / "models" / "loras"
LORAS.mkdir(parents=True, exist_ok=True)
folder_paths.add_model_folder_path("loras", str(LORAS), is_default=True)

import comfy.model_management as mm  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import nodes as comfy_nodes  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

PKG = "comfyui_fdfo_nodepack"
spec = importlib.util.spec_from_file_location(PKG, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
pack = importlib.util.module_from_spec(spec)
sys.modules[PKG] = pack
spec.loader.exec_module(pack)
M = pack.NODE_CLASS_MAPPINGS

from comfyui_fdfo_nodepack.fdfo_core.config import load_config  # noqa: E402
from comfyui_fdfo_nodepack.fdfo_core.families import family_names, get_family  # noqa: E402
from comfyui_fdfo_nodepack.fdfo_core.backends.lora_files import lora_modules, save_lora  # noqa: E402
from comfyui_fdfo_nodepack.fdfo_core.rewards import Reward  # noqa: E402
from comfyui_fdfo_nodepack.nodes.comfy_backend import ComfyBackend  # noqa: E402
from family_cases import CASES_BY_ID  # noqa: E402

TOL = 1e-4  # relative: the same fp32 computation in two frameworks


def report(case, name, ok, **figures):
    print("RESULT " + json.dumps({"case": case, "check": name, "ok": bool(ok), **figures}), flush=True)


def relative(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


class LogLines(logging.Handler):
    """Collects ComfyUI's log lines (e.g. 'lora key not loaded: ...') while active."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)

    def not_loaded(self) -> list[str]:
        return [line for line in self.lines if "lora key not loaded" in line]


class SavedCLIP:
    """A text encoder stand-in that returns the conditioning the diffusers side computed."""

    def __init__(self, conditioning: dict[str, tuple]):
        self.conditioning = conditioning

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        if text not in self.conditioning:  # e.g. the trainer node's negative prompt: a stable stand-in
            cross, extras = next(iter(self.conditioning.values()))
            g = torch.Generator().manual_seed(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
            cross = torch.randn(cross.shape, generator=g)
            extras = {k: torch.randn(v.shape, generator=g) if torch.is_tensor(v) else v for k, v in extras.items()}
            return [[cross, extras]]
        cross, extras = self.conditioning[text]
        return [[cross.clone(), dict(extras)]]


def random_vae(model):
    """A random VAE of the kind the model uses, narrow so that decoding is fast (decoding only
    needs plumbing and a smooth dependence on the latent): TAESD for image latents, a Wan 2.1 VAE
    (8 channels wide instead of 96) for 16-channel video latents, a Wan 2.2 VAE (8 instead of 160 /
    256) for 48-channel ones."""
    import comfy.ldm.wan.vae
    import comfy.taesd.taesd

    latent_format = model.model.latent_format
    channels = latent_format.latent_channels
    g = torch.Generator().manual_seed(1)
    if latent_format.latent_dimensions == 2:
        sd = comfy.taesd.taesd.TAESD(latent_channels=channels).state_dict()
        sd = {k: torch.randn(v.shape, generator=g) * 0.1 if v.is_floating_point() and v.ndim else v for k, v in sd.items()}
        sd["vae_scale"], sd["vae_shift"] = torch.tensor(1.0), torch.tensor(0.0)
        return comfy.sd.VAE(sd=sd)
    if latent_format.latent_dimensions != 3 or channels not in (16, 48):
        raise NotImplementedError(f"no test VAE for {latent_format.latent_dimensions}-D latents with {channels} channels")
    if channels == 48:  # the Wan 2.2 (TI2V-5B) VAE
        import comfy.ldm.wan.vae2_2

        module, narrow = comfy.ldm.wan.vae2_2, dict(dim=8, dec_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
    else:  # the Wan 2.1 VAE (Wan 2.1, Qwen-Image)
        module, narrow = comfy.ldm.wan.vae, dict(dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
    wan = module.WanVAE
    sd = wan(z_dim=channels, attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0, **narrow).state_dict()
    # ComfyUI's ops skip weight init: draw every weight (std 1 / sqrt(fan_in)), zero biases, unit gains.
    sd = {k: (torch.randn(v.shape, generator=g) / v[0].numel() ** 0.5 if v.ndim >= 2 and "gamma" not in k
              else torch.zeros_like(v) if k.endswith("bias") else torch.ones_like(v) if "gamma" in k else v)
          for k, v in sd.items()}
    module.WanVAE = lambda **kw: wan(**{**kw, **narrow})  # comfy.sd.VAE hard-codes dim 96 / 160
    try:
        return comfy.sd.VAE(sd=sd)
    finally:
        module.WanVAE = wan


class Brightness(Reward):
    name = "test_brightness"

    def _score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def config(data, **changes):
    values = dict(pairs_per_epoch=4, num_steps=4, epochs=1, sample_batch_size=4, train_batch_size=16,
                  decode_batch_size=8, optimizer_steps_per_epoch=2, checkpoint_every=0, lora_rank=data["lora_rank"],
                  lora_alpha=data["lora_alpha"], height=data["size"], width=data["size"])
    values.update(changes)
    return load_config("toy", overrides=values)


def velocity(model, clip, vae, data, cfg=None, train=False, adapter=None):
    backend = ComfyBackend(model, clip, vae, cfg or config(data), flux_guidance=data["guidance"] or 3.5)
    with torch.inference_mode(), backend.session(train=train):
        if adapter is not None:
            adapter(backend)
        v = backend.velocity(data["x"], data["t"], backend.encode_prompts(data["prompts"]))
        return backend, v.detach().clone()


def merged_model(case, folder, lora_file, strength=1.0):
    """A fresh ComfyUI model with the file merged in by hand: W += strength (alpha / rank) up @ down."""
    model = case.comfy(json.loads((folder / "config.json").read_text()), load_file(str(folder / "transformer.safetensors")))
    dm = model.model.diffusion_model
    with torch.no_grad():
        for module, (down, up, alpha) in lora_modules(load_file(str(lora_file))).items():
            weight = dm.get_submodule(module).weight
            scale = strength * (float(alpha) / down.shape[0] if alpha is not None else 1.0)
            weight.add_((scale * up.float() @ down.float()).reshape(weight.shape).to(weight.dtype))
    return model


def ksample(model, conditioning, size, scale, steps=4, seed=0):
    """KSampler's Euler on one size x size image of `model`; scale: the VAE's downscaling."""
    latent_format = model.model.latent_format
    channels, h = latent_format.latent_channels, size // scale
    shape = (1, channels, 1, h, h) if latent_format.latent_dimensions == 3 else (1, channels, h, h)
    latent = torch.zeros(shape)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", conditioning, conditioning, latent,
                               disable_pbar=True, seed=seed)


def trainer_inputs(data, **changes):
    spec = M["FDFOTrainer"].INPUT_TYPES()
    values = {k: v[1]["default"] for s in ("required", "optional") for k, v in spec[s].items() if len(v) > 1 and "default" in v[1]}
    values.update(epochs=2, pairs_per_epoch=4, steps=4, width=data["size"], height=data["size"], learning_rate=1e-2,
                  lora_rank=data["lora_rank"], lora_alpha=data["lora_alpha"], churn_strength=0.05,
                  optimizer_steps_per_epoch=2, checkpoint_every=0, sample_batch_size=4, train_batch_size=16,
                  decode_batch_size=8, preview_every=0)
    values.update(changes)
    return {k: v for k, v in values.items() if k in spec["required"] or k in spec.get("optional", {})}


def run_case(case_id):
    case, folder = CASES_BY_ID[case_id], work / case_id
    data = torch.load(folder / "inputs.pt", weights_only=False)
    # keyed by the text the backend gives the tokenizer (`Family.comfy_prompt`: Lumina 2 adds its
    # system prompt, as the diffusers side did when it computed the conditioning)
    family = get_family(case.family)
    # (and by the prompt itself, for ComfyUI's own CLIPTextEncode in the samplers)
    saved = dict(zip(data["prompts"], data["conditioning"]))
    clip = SavedCLIP({**saved, **{family.comfy_prompt(p): c for p, c in saved.items()}})
    config_json = json.loads((folder / "config.json").read_text())

    def model():
        with torch.inference_mode():  # as ComfyUI runs loader nodes
            return case.comfy(config_json, load_file(str(folder / "transformer.safetensors")))

    base = model()
    vae = random_vae(base)
    checks = []

    def check(fn):
        checks.append(fn)
        return fn

    @check
    def recognised():
        backend = ComfyBackend(base, clip, vae, config(data))
        report(case_id, "recognised", backend.family == case.family and backend.family in family_names(),
               family=backend.family, model=type(base.model).__name__)

    @check
    def base_velocity():
        _, v = velocity(base, clip, vae, data)
        diff = relative(v, data["v_base"])
        report(case_id, "base_velocity", diff < TOL, rel_diff=diff)

    @check
    def manual_merge():
        _, v = velocity(merged_model(case, folder, folder / "diffusers_lora.safetensors"), clip, vae, data)
        diff, effect = relative(v, data["v_hot"]), relative(data["v_hot"], data["v_base"])
        report(case_id, "manual_merge", diff < TOL and effect > 1e-2, rel_diff=diff, lora_effect=effect)

    @check
    def wrong_map_fails():
        _, v = velocity(merged_model(case, folder, folder / "wrong_map_lora.safetensors"), clip, vae, data)
        diff = relative(v, data["v_hot"])
        report(case_id, "wrong_map_fails", diff > 100 * TOL, rel_diff=diff)

    @check
    def stock_loader():
        name = f"{case_id}-diffusers.safetensors"
        shutil.copy(folder / "diffusers_lora.safetensors", LORAS / name)
        with LogLines() as log, torch.inference_mode():
            loaded = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, name, 1.0)[0]
        _, v = velocity(loaded, clip, vae, data)
        diff = relative(v, data["v_hot"])
        report(case_id, "stock_loader", diff < TOL and not log.not_loaded(), rel_diff=diff, not_loaded=log.not_loaded()[:5])

    @check
    def strength():
        name = f"{case_id}-diffusers.safetensors"
        shutil.copy(folder / "diffusers_lora.safetensors", LORAS / name)
        with LogLines() as log, torch.inference_mode():
            loaded = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, name, 0.5)[0]
        _, v = velocity(loaded, clip, vae, data)
        _, v_merged = velocity(merged_model(case, folder, folder / "diffusers_lora.safetensors", strength=0.5), clip, vae, data)
        diff, from_full = relative(v, v_merged), relative(v, data["v_hot"])
        report(case_id, "strength", diff < TOL and from_full > 100 * TOL and not log.not_loaded(), rel_diff=diff,
               vs_full_strength=from_full, not_loaded=log.not_loaded()[:5])

    @check
    def comfy_lora():
        def randomise(backend):
            g = torch.Generator().manual_seed(7)
            with torch.no_grad():
                for p in backend.trainable_parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)

        backend, v = velocity(base, clip, vae, data, train=True, adapter=randomise)
        with torch.inference_mode(False):
            tensors = backend.lora_file_tensors()
        save_lora(folder / "comfy_lora.safetensors", tensors, {"base_model_family": backend.family})
        torch.save({"v_hot": v}, folder / "comfy_velocity.pt")
        name = f"{case_id}-comfy.safetensors"
        shutil.copy(folder / "comfy_lora.safetensors", LORAS / name)
        with LogLines() as log, torch.inference_mode():
            loaded = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, name, 1.0)[0]
        _, v_file = velocity(loaded, clip, vae, data)
        diff, effect = relative(v_file, v), relative(v, data["v_base"])
        report(case_id, "comfy_lora", diff < TOL and effect > 1e-2 and not log.not_loaded(), file_vs_hot=diff,
               lora_effect=effect, not_loaded=log.not_loaded()[:5])

    @check
    def gradient():
        def set_adapter(backend):
            with torch.no_grad():
                for name, p in backend._params.items():
                    module, factor = name.rsplit(".", 1)
                    a, b = data["factors"][module]
                    p.copy_(a if factor == "lora_A" else b)

        figures, ok = {}, True
        for checkpointing in (False, True):
            cfg = config(data, gradient_checkpointing=checkpointing)
            backend = ComfyBackend(base, clip, vae, cfg, flux_guidance=data["guidance"] or 3.5)
            with torch.inference_mode(), backend.session(train=True):
                set_adapter(backend)
                with torch.inference_mode(False):
                    v = backend.velocity(data["x"], data["t"], backend.encode_prompts(data["prompts"]))
                    v.mul(data["w"]).sum().backward()
                grads = {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in backend._params.items()}
            top = max(float(g.abs().max()) for g in data["grads"].values())
            missing = sorted(set(data["grads"]) ^ set(grads))
            diff = max(float((grads[n] - g).abs().max()) for n, g in data["grads"].items() if n in grads) / top
            figures[f"checkpointing={checkpointing}"] = {"rel_diff": diff, "missing": missing[:4]}
            ok = ok and diff < 1e-3 and not missing
        report(case_id, "gradient", ok, **figures)

    @check
    def trainer_node():
        prompts = data["prompts"]
        with torch.inference_mode():
            res = M["FDFOTrainer"]().train(base, clip, vae, Brightness(), prompts,
                                           **trainer_inputs(data, lora_name=f"{case_id}-node"))
            hot_model, lora, _, _, name = res["result"]
            with LogLines() as log:
                from_file = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, name, 1.0)[0]
            cond = [[c, e] for c, e in (clip.encode_from_tokens_scheduled(prompts[0])[0],)]
            scale = int(vae.spacial_compression_decode())
            hot = ksample(hot_model, cond, data["size"], scale)
            file = ksample(from_file, cond, data["size"], scale)
            plain = ksample(base, cond, data["size"], scale)
        diff, effect = float((hot - file).abs().max()), float((hot - plain).abs().max())
        report(case_id, "trainer_node", diff < 1e-5 and effect > 0 and not log.not_loaded(), hot_vs_file=diff,
               lora_effect=effect, lora_keys=len(lora), not_loaded=log.not_loaded()[:5])

    for fn in checks:
        try:
            fn()
        except Exception as e:  # report and go on with the other checks
            report(case_id, fn.__name__, False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
        mm.cleanup_models()


def run_generic(case_id):
    """The untested-family fallback (`fdfo_core.families.generic`) on a ComfyUI flow model with no
    family module: a tiny AuraFlow (SDXL-type 4-channel latents) with random weights. The Trainer
    node trains it (a warning names the fallback), its LoRA touches only attention linears, and the
    file loads in LoraLoaderModelOnly with every key used and samples as the hot MODEL does."""
    import comfy.model_patcher
    import comfy.supported_models

    unet = {"in_channels": 4, "out_channels": 4, "patch_size": 2, "dim": 64, "n_layers": 2, "n_double_layers": 1,
            "n_heads": 2, "global_conddim": 64, "cond_seq_dim": 16, "max_seq": 64}
    config_ = comfy.supported_models.AuraFlow(unet)
    config_.set_inference_dtype(torch.float32, None)
    with torch.inference_mode():
        base_model = config_.get_model({})
        g = torch.Generator().manual_seed(3)
        for name, p in base_model.diffusion_model.named_parameters():  # ComfyUI's ops leave weights uninitialised
            p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5 if p.ndim >= 2 else torch.zeros(p.shape))
    base = comfy.model_patcher.ModelPatcher(base_model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    prompts = ["a red circle", "two blue squares"]
    g = torch.Generator().manual_seed(4)
    clip = SavedCLIP({p: (torch.randn(1, 8, 16, generator=g), {}) for p in prompts})
    vae = random_vae(base)
    data = {"lora_rank": 4, "lora_alpha": 8.0, "size": 64}
    with LogLines() as log, torch.inference_mode():
        res = M["FDFOTrainer"]().train(base, clip, vae, Brightness(), prompts, **trainer_inputs(data, lora_name=f"{case_id}-node"))
        hot_model, lora, _, _, name = res["result"]
    warned = any("no family module" in line for line in log.lines)
    keys = sorted({k.rsplit(".lora_", 1)[0].rsplit(".alpha", 1)[0] for k in lora})
    with LogLines() as log, torch.inference_mode():
        from_file = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, name, 1.0)[0]
        cond = [list(clip.encode_from_tokens_scheduled(prompts[0])[0])]
        hot, file, plain = (ksample(m, cond, data["size"], 8) for m in (hot_model, from_file, base))
    diff, effect = float((hot - file).abs().max()), float((hot - plain).abs().max())
    attention_only = bool(keys) and all(".attn." in k for k in keys)
    report(case_id, "generic_fallback", warned and attention_only and diff < 1e-5 and effect > 0 and not log.not_loaded(),
           warned=warned, modules=len(keys), attention_only=attention_only, hot_vs_file=diff, lora_effect=effect,
           not_loaded=log.not_loaded()[:5], example_keys=keys[:4])


if __name__ == "__main__":
    for case_id in case_ids:
        if case_id.startswith("generic-"):
            try:
                run_generic(case_id)
            except Exception as e:
                report(case_id, "generic_fallback", False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
            continue
        try:
            run_case(case_id)
        except Exception as e:
            report(case_id, "setup", False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
