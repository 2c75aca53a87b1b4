"""The FDFO LoRA inside ComfyUI: a weight wrapper on one ComfyUI linear op (`comfy_backend` attaches
it with `ModelPatcher.add_weight_wrapper`, ComfyUI's own trainer mechanism, `comfy.weight_adapter`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..fdfo_core.families import PlannedPart

try:  # ComfyUI >= 0.3.30: the base class of trainable weight adapters
    from comfy.weight_adapter import WeightAdapterTrainBase as _AdapterBase
except ImportError:  # pragma: no cover - older ComfyUI
    _AdapterBase = torch.nn.Module



class FDFOLoRA(_AdapterBase):
    """Weight wrapper W -> W + (alpha / r) * sum_p pad_p(B_p) @ A_p over the parts p of one linear.

    A_p [r, in] starts Gaussian with std 1 / r and B_p [rows, r] at zero (peft's "gaussian" init,
    as the diffusers backend), so training starts from the base model. Parameters are fp32; the
    update is computed in fp32 outside autocast and added in the weight's own dtype, as ComfyUI's
    LoRA adapters do.

    weight_scale: the factor s a scaled-fp8 layer multiplies the weight functions' output by
    (`comfy_layers.post_function_scale`); the update is added as dW / s there, so the layer acts as
    s W_raw + dW, which is what the saved file does in ComfyUI's LoRA loaders.
    """

    def __init__(self, module: str, out_features: int, in_features: int, parts: list[PlannedPart], rank: int,
                 alpha: float, generator: torch.Generator, device: torch.device,
                 weight_scale: torch.Tensor | None = None):
        super().__init__()
        self.module = module
        # A normal float32 copy: the layer's own may be an inference tensor (loaded under inference mode).
        self.weight_scale = None if weight_scale is None else weight_scale.detach().float().clone()
        self.parts = list(parts)
        self.out_features = out_features
        self.scale = float(alpha) / rank
        self.enabled = True
        self.lora_A = torch.nn.ParameterList(
            [torch.nn.Parameter((torch.randn(rank, in_features, generator=generator) / rank).to(device)) for _ in parts]
        )
        self.lora_B = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(p.rows, rank, device=device)) for p in parts]
        )

    def delta(self) -> torch.Tensor:
        """The fp32 weight update [out, in]."""
        ups = [F.pad(b, (0, 0, p.offset, self.out_features - p.offset - p.rows)) for p, b in zip(self.parts, self.lora_B)]
        up = ups[0] if len(ups) == 1 else torch.cat(ups, dim=1)
        down = self.lora_A[0] if len(self.lora_A) == 1 else torch.cat(list(self.lora_A), dim=0)
        return (up @ down) * self.scale

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        with torch.autocast(w.device.type, enabled=False):
            d = self.delta().to(w.device)
            if self.weight_scale is not None:
                d = d / self.weight_scale.to(w.device)
        return (w + d.reshape(w.shape)).to(w.dtype)

    def passive_memory_usage(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def move_to(self, device) -> int:
        with torch.inference_mode(False):  # ComfyUI may load models under inference mode: stay trainable
            self.to(device)
        return self.passive_memory_usage()
