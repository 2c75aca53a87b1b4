"""Reward loader nodes (one per reward family), Combine Rewards and Score Images.

A loader builds the reward once (ComfyUI caches the output while its inputs stay the same) and
passes the `fdfo_core.rewards.Reward` object on as FDFO_REWARD. Weights are never downloaded:
learned rewards look in `ComfyUI/models/fdfo_rewards/<name>/` (docs/rewards.md); errors name the
reward, the missing folder and where to get it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..fdfo_core.rewards import RewardError, WeightedSum, build_reward, list_reward_folders
from ..fdfo_core.rewards.base import PartialRewardError, as_scores
from .common import CATEGORY, log, PROMPTS, REWARD, image_to_nchw, nchw_to_image, pil_to_image, reward_report, split_prompts_for_images, torch_device

AUTO = "auto"
OUTPUT_TOOLTIP = "The reward: scores images in [0, 1] with their prompts (higher is better). Connect it to FDFO Trainer, Paired Sampler, Score Images or Combine Rewards."


def _folders() -> list[str]:
    try:
        return [AUTO] + list_reward_folders()
    except Exception:  # a broken extra_model_paths entry must not hide the node
        return [AUTO]


def _path_input(what: str) -> tuple:
    return (_folders(), {"default": AUTO, "tooltip": (
        f"{what}: a sub-folder of ComfyUI/models/fdfo_rewards/. 'auto' looks for the default folder name "
        "(see docs/rewards.md), then the offline Hugging Face cache.")})


def _common_learned(micro_batch: int) -> dict[str, tuple]:
    return {
        "dtype": (["auto", "float32", "bfloat16", "float16"], {"default": "auto", "tooltip": (
            "Precision of the reward model. auto: float32 on the CPU; on a GPU float32 for CLIP-type rewards and "
            "bfloat16 for the VLM.")}),
        "micro_batch": ("INT", {"default": micro_batch, "min": 1, "max": 1024, "tooltip": (
            "Images per forward pass of the reward model; lower it if memory runs out.")}),
        "device": (["auto", "cpu"], {"default": "auto", "tooltip": (
            "Where the reward model runs. auto: ComfyUI's device (the GPU if there is one); cpu keeps VRAM free for "
            "the model being trained, at the cost of speed.")}),
    }


def _opt(value: Any) -> Any:
    """Widget value -> reward option (AUTO and empty text mean 'not given')."""
    if isinstance(value, str) and value.strip() in ("", AUTO):
        return None
    return value


def load_reward(name: str, options: dict[str, Any], device: str = "auto"):
    """Build one registered reward, with options from widgets; RewardError says which and why."""
    dev = torch_device(device)
    opts = {k: v for k, v in ((k, _opt(v)) for k, v in options.items()) if v is not None}
    # Models built here are used later with autograd enabled (training); inference-mode tensors
    # could not be, so build outside inference mode (nodes run inside it).
    with torch.inference_mode(False):
        try:
            return build_reward(name, options={name: opts} if opts else None, device=dev)
        except RewardError:
            raise
        except Exception as e:
            raise RewardError(f"reward {name!r} could not be loaded: {type(e).__name__}: {e}") from e


class _RewardLoader:
    CATEGORY = f"{CATEGORY}/rewards"
    RETURN_TYPES = (REWARD,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = (OUTPUT_TOOLTIP,)
    FUNCTION = "load"


class FDFOSimpleReward(_RewardLoader):
    DESCRIPTION = "Weight-free image statistics as a reward: brightness, saturation, colourfulness, JPEG (in)compressibility. For tests, demos and DDPO-style experiments."
    METRICS = ["brightness", "saturation", "colourfulness", "jpeg_compressibility", "jpeg_incompressibility"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "metric": (cls.METRICS, {"default": "brightness", "tooltip": (
                "brightness: mean luma 0-1; saturation: mean HSV saturation 0-1; colourfulness: Hasler-Suesstrunk; "
                "jpeg_compressibility: minus the JPEG size in kB (smaller files score higher); "
                "jpeg_incompressibility: the JPEG size in kB.")}),
            "jpeg_quality": ("INT", {"default": 95, "min": 1, "max": 100, "tooltip": "JPEG quality for the two JPEG metrics (ignored by the others)."}),
        }}

    def load(self, metric, jpeg_quality):
        options = {"quality": jpeg_quality} if metric.startswith("jpeg") else {}
        return (load_reward(metric, options, device="cpu"),)


class FDFOToyAlignmentReward(_RewardLoader):
    DESCRIPTION = "The bundled toy world's caption-alignment reward (colours, shapes, counts, positions, background; 0 to 1). Weight-free; use it with the FDFO Toy Model."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        return (load_reward("toy_alignment", {}, device="cpu"),)


class FDFOPickScoreReward(_RewardLoader):
    DESCRIPTION = "PickScore (CLIP-H fine-tuned on Pick-a-Pic human preferences), about 18 to 23 on real images. The FDFO paper's main reward. Weights: models/fdfo_rewards/pickscore/ + CLIP-ViT-H-14-laion2B-s32B-b79K/ (tokenizer files)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": _path_input("PickScore_v1 folder"),
            "processor_path": _path_input("CLIP-H tokenizer/preprocessor folder"),
            **_common_learned(16),
        }}

    def load(self, path, processor_path, dtype, micro_batch, device):
        return (load_reward("pickscore", {"path": path, "processor_path": processor_path, "dtype": dtype,
                                          "micro_batch": micro_batch}, device),)


class FDFOHPSv2Reward(_RewardLoader):
    DESCRIPTION = "Human Preference Score v2 / v2.1: cosine of the HPS-tuned CLIP-H image and text features (about 0.20 to 0.33; 'scale' multiplies it). Weights: models/fdfo_rewards/hpsv2/."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": _path_input("HPSv2 checkpoint folder"),
            "version": (["2.1", "2.0"], {"default": "2.1", "tooltip": "HPS_v2.1_compressed.pt or HPS_v2_compressed.pt."}),
            "tokenizer_path": _path_input("CLIP BPE tokenizer folder"),
            "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.1, "tooltip": "Multiplies the cosine (100 gives a range like PickScore's)."}),
            **_common_learned(16),
        }}

    def load(self, path, version, tokenizer_path, scale, dtype, micro_batch, device):
        return (load_reward("hpsv2", {"path": path, "version": version, "tokenizer_path": tokenizer_path, "scale": scale,
                                      "dtype": dtype, "micro_batch": micro_batch}, device),)


class FDFOAestheticReward(_RewardLoader):
    DESCRIPTION = "LAION aesthetic predictor v2 (an MLP on CLIP ViT-L/14 image embeddings), about 1 to 10; ignores the prompt. Weights: models/fdfo_rewards/aesthetic/ + clip-vit-large-patch14/."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": _path_input("aesthetic head (sac+logos+ava1-l14-linearMSE) folder"),
            "clip_path": _path_input("CLIP ViT-L/14 folder"),
            **_common_learned(32),
        }}

    def load(self, path, clip_path, dtype, micro_batch, device):
        return (load_reward("aesthetic", {"path": path, "clip_path": clip_path, "dtype": dtype, "micro_batch": micro_batch}, device),)


class FDFOClipScoreReward(_RewardLoader):
    DESCRIPTION = "CLIP score: scale * max(cos(text, image), 0) with any CLIP or SigLIP checkpoint (default openai/clip-vit-large-patch14). Weights: models/fdfo_rewards/clipscore/ or clip-vit-large-patch14/."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": _path_input("CLIP or SigLIP checkpoint folder"),
            "model": ("STRING", {"default": "openai/clip-vit-large-patch14", "tooltip": "Hugging Face id, looked up in the offline cache and as a folder name when path is 'auto'."}),
            "scale": ("FLOAT", {"default": 100.0, "min": 0.0, "max": 1000.0, "step": 0.5, "tooltip": "Multiplier of the cosine (100 as text-to-image papers report it; the CLIPScore paper uses 2.5)."}),
            **_common_learned(32),
        }}

    def load(self, path, model, scale, dtype, micro_batch, device):
        return (load_reward("clipscore", {"path": path, "model": model, "scale": scale, "dtype": dtype,
                                          "micro_batch": micro_batch}, device),)


class FDFOVLMReward(_RewardLoader):
    DESCRIPTION = "Ask a vision-language model a yes/no question about each image: 100 * sigmoid(logit(Yes) - logit(No)). The FDFO paper uses Qwen2.5-VL-7B-Instruct with the caption-matching question. Weights: models/fdfo_rewards/vlm/ (or a folder you pick)."

    @classmethod
    def INPUT_TYPES(cls):
        from ..fdfo_core.rewards.vlm import DEFAULT_QUESTION, DEFAULT_VLM

        return {"required": {
            "path": _path_input("VLM folder (Qwen2.5-VL, Qwen2-VL, Qwen3-VL, SmolVLM, Idefics3, LLaVA)"),
            "question": ("STRING", {"default": DEFAULT_QUESTION, "multiline": True, "tooltip": (
                "The yes/no question; {prompt} is replaced by each image's prompt. Presets by name: caption_matching, "
                "professional_quality, photorealism.")}),
            "target": ("STRING", {"default": "Yes", "tooltip": "The answer whose probability is the reward (one token)."}),
            "contrast": ("STRING", {"default": "No", "tooltip": "The competing answer (one token)."}),
            "image_size": ("INT", {"default": 504, "min": 0, "max": 4096, "step": 8, "tooltip": "Images are resized to this square size first (504 in the paper); 0 keeps their size."}),
            "model": ("STRING", {"default": DEFAULT_VLM, "tooltip": "Hugging Face id, looked up in the offline cache and as a folder name when path is 'auto'."}),
            "scale": ("FLOAT", {"default": 100.0, "min": 0.0, "max": 1000.0, "step": 1.0, "tooltip": "Multiplier of the yes-probability."}),
            **_common_learned(4),
        }}

    def load(self, path, question, target, contrast, image_size, model, scale, dtype, micro_batch, device):
        if not question.strip():
            raise RewardError("vlm: the question is empty; write a yes/no question (use {prompt} for the image's prompt)")
        return (load_reward("vlm", {"path": path, "question": question, "target": target, "contrast": contrast,
                                    "image_size": image_size if image_size > 0 else "none", "model": model,
                                    "scale": scale, "dtype": dtype, "micro_batch": micro_batch}, device),)


class FDFORemoteReward(_RewardLoader):
    DESCRIPTION = "Score with your own HTTP server (protocol fdfo-reward/1: POST JSON with base64 images and prompts, reply {\"scores\": [...]}). Nothing is sent unless you give a URL. Example server: python -m fdfo_core.rewards.remote_server_example."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "url": ("STRING", {"default": "http://127.0.0.1:8765/score", "tooltip": "http:// or https:// address of the scoring endpoint."}),
            "timeout": ("FLOAT", {"default": 60.0, "min": 1.0, "max": 3600.0, "step": 1.0, "tooltip": "Seconds to wait for one reply."}),
            "retries": ("INT", {"default": 3, "min": 0, "max": 20, "tooltip": "Further attempts after a timeout, refused connection, HTTP 429 or 5xx."}),
            "backoff": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 60.0, "step": 0.5, "tooltip": "Seconds before the first retry, doubling each time."}),
            "headers": ("STRING", {"default": "", "tooltip": "Extra headers, 'Name: value; Name2: value2' (empty: none)."}),
            "api_key_env": ("STRING", {"default": "", "tooltip": "Name of an environment variable whose value is sent as 'Authorization: Bearer ...' (empty: none). The key itself never goes into the workflow."}),
            "image_format": (["png", "jpeg"], {"default": "png", "tooltip": "How images are encoded in the request."}),
            "jpeg_quality": ("INT", {"default": 95, "min": 1, "max": 100, "tooltip": "JPEG quality when image_format is jpeg."}),
            "micro_batch": ("INT", {"default": 8, "min": 1, "max": 1024, "tooltip": "Images per request."}),
        }}

    def load(self, url, timeout, retries, backoff, headers, api_key_env, image_format, jpeg_quality, micro_batch):
        if not url.strip():
            raise RewardError("remote: give the URL of your scoring server (nothing is sent without one)")
        return (load_reward("remote", {"url": url.strip(), "timeout": timeout, "retries": retries, "backoff": backoff,
                                       "headers": headers, "api_key_env": api_key_env, "image_format": image_format,
                                       "jpeg_quality": jpeg_quality, "micro_batch": micro_batch}, device="cpu"),)


class FDFOCombineRewards:
    CATEGORY = f"{CATEGORY}/rewards"
    RETURN_TYPES = (REWARD,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = ("weight_1 * reward_1 + weight_2 * reward_2 + ... (the FDFO paper's default: PickScore + 0.1 * VLM).",)
    FUNCTION = "combine"
    DESCRIPTION = "A weighted sum of up to four rewards, e.g. PickScore + 0.1 * VLM alignment. Each part's scores are kept for logging."
    SLOTS = 4

    @classmethod
    def INPUT_TYPES(cls):
        def weight(i, default):
            return ("FLOAT", {"default": default, "min": -1000.0, "max": 1000.0, "step": 0.01,
                              "tooltip": f"Weight of reward_{i} (negative to penalise)."})

        optional = {}
        for i in range(2, cls.SLOTS + 1):
            optional[f"reward_{i}"] = (REWARD, {"tooltip": f"Optional reward {i}."})
            optional[f"weight_{i}"] = weight(i, 1.0 if i > 2 else 0.1)
        return {"required": {"reward_1": (REWARD, {"tooltip": "First reward."}), "weight_1": weight(1, 1.0)},
                "optional": optional}

    def combine(self, reward_1, weight_1, **optional):
        terms = [(float(weight_1), reward_1)]
        for i in range(2, self.SLOTS + 1):
            r = optional.get(f"reward_{i}")
            if r is not None:
                terms.append((float(optional.get(f"weight_{i}", 1.0)), r))
        if len(terms) == 1 and terms[0][0] == 1.0:
            return (reward_1,)
        return (WeightedSum(terms),)


def score_images(reward, images_nchw: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Scores [N] (float32), NaN for images the reward could not score (see `score_images_noted`)."""
    return score_images_noted(reward, images_nchw, prompts)[0]


def score_images_noted(reward, images_nchw: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, str]:
    """(scores [N] float32, note). Images the reward could not score are NaN (fdfo_core's policy
    for partial failures) and `note` says how many and why; a reward that fails for every image
    raises a RewardError naming the reward."""
    name = reward.describe() if hasattr(reward, "describe") else type(reward).__name__
    note = ""
    try:
        scores = reward(images_nchw, prompts)
    except PartialRewardError as e:
        scores, note = e.scores, str(e)
    except RewardError:
        raise
    except Exception as e:
        raise RewardError(f"reward {name!r} failed: {type(e).__name__}: {e}") from e
    scores = as_scores(scores, images_nchw.shape[0], f"reward {name!r}")
    missing = int((~torch.isfinite(scores)).sum())
    if missing and not note:
        note = f"{missing} of {scores.shape[0]} images got no finite score (NaN, infinite or missing)"
    if note:
        log.warning("FDFO: %s", note)
    return scores, note


def thumbnails(images: torch.Tensor, max_side: int = 256) -> torch.Tensor:
    """Downscale [B, 3, H, W] so the longer side is at most max_side (for grids)."""
    h, w = images.shape[-2:]
    f = max(h, w) / max_side
    if f <= 1:
        return images
    size = (max(1, round(h / f)), max(1, round(w / f)))
    return torch.nn.functional.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


class FDFOScoreImages:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "STRING", "IMAGE", "IMAGE")
    RETURN_NAMES = ("scores", "report", "grid", "images")
    OUTPUT_IS_LIST = (True, False, False, False)
    OUTPUT_TOOLTIPS = (
        "One score per image, in the order of the output images (a list).",
        "One line per image: its score and prompt.",
        "The images in a grid, each labelled with its score (and rank when sorted).",
        "The images, sorted as chosen.",
    )
    FUNCTION = "score"
    DESCRIPTION = "Score and rank any images with an FDFO reward: useful on its own to compare models, seeds or LoRAs."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The images to score (any size; a batch)."}),
            "prompts": (PROMPTS, {"tooltip": "One prompt for all images, one per image, or k prompts each covering N/k consecutive images."}),
            "reward": (REWARD, {"tooltip": "The reward that scores them."}),
            "sort": (["none", "best first", "worst first"], {"default": "best first", "tooltip": "Order of the grid and of the images output."}),
            "columns": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Images per row of the grid."}),
        }}

    def score(self, images, prompts, reward, sort, columns):
        from ..fdfo_core.images import image_grid

        x = image_to_nchw(images)
        per_image = split_prompts_for_images(prompts, x.shape[0])
        scores, note = score_images_noted(reward, x, per_image)
        order = list(range(x.shape[0]))
        if sort != "none":  # images without a score go last either way
            finite = [i for i in order if math.isfinite(float(scores[i]))]
            order = sorted(finite, key=lambda i: float(scores[i]), reverse=(sort == "best first"))
            order += [i for i in range(x.shape[0]) if i not in set(finite)]
        labels = [f"{'#' + str(r + 1) + ' ' if sort != 'none' else ''}{float(scores[i]):.4g}" for r, i in enumerate(order)]
        grid = image_grid(thumbnails(x[order]), ncol=columns, labels=labels, label_height=14)
        report = reward_report([float(scores[i]) for i in order], [per_image[i] for i in order],
                               [f"#{r + 1} image {i}" for r, i in enumerate(order)])
        if note:
            report += f"\n{note}"
        return ([float(scores[i]) for i in order], report, pil_to_image(grid), nchw_to_image(x[order]))


NODES = {
    "FDFOSimpleReward": (FDFOSimpleReward, "FDFO Simple Reward"),
    "FDFOToyAlignmentReward": (FDFOToyAlignmentReward, "FDFO Toy Alignment Reward"),
    "FDFOPickScoreReward": (FDFOPickScoreReward, "FDFO PickScore Reward"),
    "FDFOHPSv2Reward": (FDFOHPSv2Reward, "FDFO HPSv2 Reward"),
    "FDFOAestheticReward": (FDFOAestheticReward, "FDFO Aesthetic Reward"),
    "FDFOClipScoreReward": (FDFOClipScoreReward, "FDFO CLIP Score Reward"),
    "FDFOVLMReward": (FDFOVLMReward, "FDFO VLM Yes/No Reward"),
    "FDFORemoteReward": (FDFORemoteReward, "FDFO Remote Reward"),
    "FDFOCombineRewards": (FDFOCombineRewards, "FDFO Combine Rewards"),
    "FDFOScoreImages": (FDFOScoreImages, "FDFO Score Images"),
}
