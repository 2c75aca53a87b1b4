"""Run with ComfyUI's python: train-free check that an FDFO LoRA file loads in ComfyUI exactly.

Builds a tiny SD3 transformer that ComfyUI's model detection accepts (hidden 64 x depth, heads =
depth), attaches the diffusers+peft adapter, perturbs it, writes the LoRA file, then loads base
weights and LoRA through ComfyUI (load_diffusion_model_state_dict + load_lora_for_models) and
prints the largest velocity difference between the two stacks as JSON.
"""

import json
import sys

comfy_root, repo, out_dir = sys.argv[1:4]
sys.path.insert(0, comfy_root)
sys.path.insert(0, repo)
sys.argv = [sys.argv[0], "--cpu"]

import torch  # noqa: E402

from comfy.cli_args import args  # noqa: E402

args.cpu = True
import comfy.model_management  # noqa: E402,F401
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
from diffusers import SD3Transformer2DModel  # noqa: E402
from peft import LoraConfig  # noqa: E402

from fdfo_core.backends.diffusers_backend import ADAPTER  # noqa: E402
from fdfo_core.lora_files import fuse_lora, save_lora  # noqa: E402

torch.manual_seed(0)
depth = 2
transformer = SD3Transformer2DModel(
    sample_size=8, patch_size=2, in_channels=16, num_layers=depth, attention_head_dim=64,
    num_attention_heads=depth, joint_attention_dim=32, caption_projection_dim=64 * depth,
    pooled_projection_dim=32, out_channels=16, pos_embed_max_size=16,
).eval()
with torch.no_grad():
    for name, p in transformer.named_parameters():
        p.copy_(torch.randn(p.shape) * (1 / p[0].numel() ** 0.5 if p.ndim >= 2 else 0.02))
base_sd = {k: v.clone() for k, v in transformer.state_dict().items()}

transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                   target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                                                   "add_k_proj", "add_v_proj", "to_add_out"]), adapter_name=ADAPTER)
from peft.tuners.lora import LoraLayer  # noqa: E402

factors, scale = {}, None
with torch.no_grad():
    for name, m in transformer.named_modules():
        if isinstance(m, LoraLayer):
            m.lora_B[ADAPTER].weight.copy_(torch.randn(m.lora_B[ADAPTER].weight.shape) * 0.3)
            factors[name] = (m.lora_A[ADAPTER].weight.clone(), m.lora_B[ADAPTER].weight.clone())
            scale = m.scaling[ADAPTER]


def out_features(name):
    mod = transformer.get_submodule(name)
    return getattr(mod, "base_layer", mod).out_features


path = f"{out_dir}/tiny_lora.safetensors"
save_lora(path, fuse_lora("sd3", factors, scale, out_features), {"base_model_family": "sd3"})

g = torch.Generator().manual_seed(1)
x = torch.randn(2, 16, 8, 8, generator=g)
ctx = torch.randn(2, 7, 32, generator=g)
pooled = torch.randn(2, 32, generator=g)
sigma = torch.tensor([0.8, 0.3])
with torch.no_grad():
    v_diffusers = transformer(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=ctx,
                              pooled_projections=pooled, return_dict=False)[0]

model = comfy.sd.load_diffusion_model_state_dict(base_sd)
lora_sd = comfy.utils.load_torch_file(path, safe_load=True)
model_lora, _ = comfy.sd.load_lora_for_models(model, None, lora_sd, 1.0, 0)
comfy.model_management.load_models_gpu([model_lora])
with torch.no_grad():
    denoised = model_lora.model.apply_model(x, sigma, c_crossattn=ctx, y=pooled)
    v_comfy = (x - denoised) / sigma.reshape(-1, 1, 1, 1)
    comfy.model_management.load_models_gpu([model])
    base = model.model.apply_model(x, sigma, c_crossattn=ctx, y=pooled)
    v_base = (x - base) / sigma.reshape(-1, 1, 1, 1)
print("RESULT " + json.dumps({
    "max_diff": float((v_comfy - v_diffusers).abs().max()),
    "lora_effect": float((v_comfy - v_base).abs().max()),
    "keys_loaded": len(lora_sd),
}))
