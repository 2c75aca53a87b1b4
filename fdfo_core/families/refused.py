"""diffusers pipelines FDFO refuses by class, with the reason (no family module covers them).

Each is a flow-matching pipeline of diffusers 0.42 (or sits beside one) that a user may point
`fdfo train` at; the message says why it is not a plain text-to-image flow FDFO can train, or what a
module for it would need. Image-conditioned pipelines of a supported family are the family's
`diffusers_needs_input` instead; eps / v-prediction diffusion models are refused by their scheduler.
"""

from __future__ import annotations

#: pipeline class -> why FDFO does not train it (a whole sentence that says what to do instead).
REFUSED_PIPELINES: dict[str, str] = {
    "GlmImagePipeline": (
        "GLM-Image is not a plain text-to-image flow: an autoregressive vision-language model first samples "
        "discrete image tokens from the prompt, and the flow transformer only decodes them into pixels. FDFO's "
        "finite-difference pairs would have to share the prior's sampled tokens, and a LoRA on the decoder cannot "
        "change the composition the prior chose, so FDFO does not train it"
    ),
    "Ideogram4Pipeline": (
        "Ideogram 4 samples with asymmetric CFG: a second, unconditional transformer is blended with the text-"
        "conditioned one at every step, on a logit-normal resolution schedule, with an optional prompt-enhancer "
        "head. FDFO's guided velocity runs one transformer with an empty prompt, so it cannot sample (or train) it "
        "as the model is meant to be used; no family module is written"
    ),
    "BriaFibo2Pipeline": (
        "Bria FIBO 2 (Qwen3-VL text encoder over JSON captions with text drawn into images, Flux.2 VAE, text-to-image "
        "and editing in one pipeline) has no family module yet (Bria FIBO 1, BriaFiboPipeline, has one)"
    ),
    "NucleusMoEImagePipeline": (
        "NucleusMoE-Image (single-stream MoE DiT, Qwen3-VL text features through Qwen3VLProcessor) has no family "
        "module yet; its processor needs torchvision, which FDFO's test environment lacks"
    ),
    "DreamLitePipeline": (
        "DreamLite is a mobile flow UNet whose pipeline forces a batch of one and switches to instruction editing "
        "when an image is given; it has no family module (FDFO batches prompts)"
    ),
    "DreamLiteMobilePipeline": (
        "DreamLite Mobile is a mobile flow UNet whose pipeline forces a batch of one; it has no family module "
        "(FDFO batches prompts)"
    ),
    "PRXPipeline": (
        "PRX (Photoroom) cannot be trained by FDFO's diffusers backend with diffusers 0.42: its transformer "
        "(PRXTransformer2DModel) has no peft adapter support (no add_adapter / load_lora_adapter), through which "
        "the backend adds and loads LoRAs, and its text encoder class (T5GemmaEncoder) is not one transformers "
        "exports, so a saved PRX folder does not load with from_pretrained"
    ),
    "PRXPixelPipeline": (
        "PRX Pixel denoises RGB pixels directly with x-prediction from noise of scale 2 (`noise_scale`): FDFO's "
        "flow convention (x_t = (1 - t) x_0 + t * noise with unit noise, a VAE latent) does not hold for it"
    ),
    "DiffusionGemmaPipeline": "Diffusion Gemma is a discrete text diffusion language model, not an image model",
    "LLaDA2Pipeline": "LLaDA 2 is a discrete text diffusion language model, not an image model",
    "Kandinsky6TI2VAPipeline": (
        "Kandinsky 6 TI2VA generates video with audio; FDFO trains image models (Kandinsky 5 Image has its own "
        "entry in the family table)"
    ),
    "Kandinsky6SRPipeline": "Kandinsky 6 SR is a super-resolution model that needs an input image or video",
    "JoyImageEditPipeline": "JoyImage Edit is an editing model that needs an input image",
    "JoyImageEditPlusPipeline": "JoyImage Edit Plus is an editing model that needs input images",
    "SanaSprintPipeline": (
        "Sana-Sprint is a few-step consistency-distilled model (sCM on TrigFlow time, not a rectified flow); train "
        "Sana (SanaPipeline, e.g. Efficient-Large-Model/Sana_1600M_1024px_diffusers) instead"
    ),
    "SanaPAGPipeline": (
        "Sana with perturbed-attention guidance, a sampling method FDFO does not apply; load the same weights as "
        "SanaPipeline"
    ),
    "SanaVideoPipeline": "Sana-Video is a video model; FDFO trains image models",
    "SanaImageToVideoPipeline": "Sana-Video image-to-video needs an input image and makes video",
    "SanaWMPipeline": "Sana-WM is a video world model; FDFO trains image models",
    "AnyFlowPipeline": "AnyFlow is a video flow-map model (a few-step map between times, not a velocity field)",
    "AnyFlowFARPipeline": "AnyFlow FAR is a video flow-map model (a few-step map between times, not a velocity field)",
    "HeliosPipeline": "Helios is a video model with its own schedulers; FDFO trains image models",
    "HeliosPyramidPipeline": "Helios is a video model with its own schedulers; FDFO trains image models",
}
