"""Reward loader nodes, one per reward family (Combine Rewards and Score Images: `scoring_nodes`).

A loader builds the reward once (ComfyUI caches the output while its inputs stay the same) and
passes the `fdfo_core.rewards.Reward` object on as FDFO_REWARD. Learned rewards look in
`ComfyUI/models/fdfo_rewards/<name>/` (docs/rewards.md); errors name the reward, the missing folder
and where to get it. Weights are downloaded only when a node's `fetch_missing_weights` switch (off
by default) is on (fdfo_core/rewards/fetch.py).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ..fdfo_core.rewards import RewardError, build_reward, list_reward_folders
from .common import CATEGORY, log, REWARD, image_to_nchw, torch_device

AUTO = "auto"
OUTPUT_TOOLTIP = "The reward: scores images in [0, 1] with their prompts (higher is better). Connect it to FDFO Trainer, Paired Sampler, Score Images or Combine Rewards."


def _folders() -> list[str]:
    try:
        return [AUTO] + list_reward_folders()
    except Exception:  # a broken extra_model_paths entry must not hide the node
        return [AUTO]


def path_input(what: str) -> tuple:
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


def widget_option(value: Any) -> Any:
    """Widget value -> reward option (AUTO and empty text mean 'not given')."""
    if isinstance(value, str) and value.strip() in ("", AUTO):
        return None
    return value


#: Reward options that point at weights the user placed: with one of them set, nothing is fetched.
PATH_OPTIONS = ("path", "processor_path", "tokenizer_path", "clip_path", "text_path")


def _fetch_input() -> dict[str, tuple]:
    return {"fetch_missing_weights": ("BOOLEAN", {"default": False, "tooltip": (
        "Download the files this reward needs from the Hugging Face Hub into models/fdfo_rewards/ when they are "
        "missing (only those files; shown on the progress bar; an interrupted download continues on the next run). "
        "Off: nothing is ever downloaded. Honours HF_ENDPOINT (a mirror), HF_TOKEN and HF_HUB_OFFLINE.")})}


def fetch_missing(name: str, options: dict[str, Any]) -> None:
    """Fetch what reward `name` needs and no reward folder holds (fdfo_core/rewards/fetch.py), with
    ComfyUI's progress bar (Cancel stops it; the partial files are continued next time). Nothing is
    fetched when a path option names the weights' place."""
    from ..fdfo_core.rewards.fetch import fetch_weights, missing_parts

    given = [k for k in PATH_OPTIONS if options.get(k) is not None]
    if given:
        log.info("FDFO: %s: %s given, nothing fetched", name, ", ".join(given))
        return
    if not missing_parts(name, options):
        return
    try:
        from .common import NodeProgress

        bar = NodeProgress(1000)
    except ImportError:  # outside ComfyUI (unit tests): no progress bar
        bar = None

    def progress(done: int, total: int) -> None:
        check_interrupt_if_running()
        if bar is not None:
            bar.update(1000 * done / max(total, 1))

    fetch_weights(name, options, progress=progress, log=lambda line: log.info("FDFO: %s", line))


def check_interrupt_if_running() -> None:
    """ComfyUI's Cancel, when running inside ComfyUI."""
    try:
        from .common import check_interrupt

        check_interrupt()
    except ImportError:
        pass


def load_reward(name: str, options: dict[str, Any], device: str = "auto", fetch: bool = False):
    """Build one registered reward, with options from widgets; RewardError says which and why.
    fetch: first download missing weights (`fetch_missing`)."""
    dev = torch_device(device)
    opts = {k: v for k, v in ((k, widget_option(v)) for k, v in options.items()) if v is not None}
    if fetch:
        fetch_missing(name, opts)
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
            "path": path_input("PickScore_v1 folder"),
            "processor_path": path_input("CLIP-H tokenizer/preprocessor folder"),
            **_common_learned(16),
        }, "optional": _fetch_input()}

    def load(self, path, processor_path, dtype, micro_batch, device, fetch_missing_weights=False):
        return (load_reward("pickscore", {"path": path, "processor_path": processor_path, "dtype": dtype,
                                          "micro_batch": micro_batch}, device, fetch=fetch_missing_weights),)


class FDFOHPSv2Reward(_RewardLoader):
    DESCRIPTION = "Human Preference Score v2 / v2.1: cosine of the HPS-tuned CLIP-H image and text features (about 0.20 to 0.33; 'scale' multiplies it). Weights: models/fdfo_rewards/hpsv2/."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": path_input("HPSv2 checkpoint folder"),
            "version": (["2.1", "2.0"], {"default": "2.1", "tooltip": "HPS_v2.1_compressed.pt or HPS_v2_compressed.pt."}),
            "tokenizer_path": path_input("CLIP BPE tokenizer folder"),
            "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.1, "tooltip": "Multiplies the cosine (100 gives a range like PickScore's)."}),
            **_common_learned(16),
        }, "optional": _fetch_input()}

    def load(self, path, version, tokenizer_path, scale, dtype, micro_batch, device, fetch_missing_weights=False):
        return (load_reward("hpsv2", {"path": path, "version": version, "tokenizer_path": tokenizer_path, "scale": scale,
                                      "dtype": dtype, "micro_batch": micro_batch}, device, fetch=fetch_missing_weights),)


class FDFOAestheticReward(_RewardLoader):
    DESCRIPTION = "LAION aesthetic predictor v2 (an MLP on CLIP ViT-L/14 image embeddings), about 1 to 10; ignores the prompt. Weights: models/fdfo_rewards/aesthetic/ + clip-vit-large-patch14/."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": path_input("aesthetic head (sac+logos+ava1-l14-linearMSE) folder"),
            "clip_path": path_input("CLIP ViT-L/14 folder"),
            **_common_learned(32),
        }, "optional": _fetch_input()}

    def load(self, path, clip_path, dtype, micro_batch, device, fetch_missing_weights=False):
        return (load_reward("aesthetic", {"path": path, "clip_path": clip_path, "dtype": dtype, "micro_batch": micro_batch},
                            device, fetch=fetch_missing_weights),)


class FDFOClipScoreReward(_RewardLoader):
    DESCRIPTION = "CLIP score: scale * max(cos(text, image), 0) with any CLIP or SigLIP checkpoint (default openai/clip-vit-large-patch14). Weights: models/fdfo_rewards/clipscore/ or clip-vit-large-patch14/."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": path_input("CLIP or SigLIP checkpoint folder"),
            "model": ("STRING", {"default": "openai/clip-vit-large-patch14", "tooltip": "Hugging Face id, looked up in the offline cache and as a folder name when path is 'auto'."}),
            "scale": ("FLOAT", {"default": 100.0, "min": 0.0, "max": 1000.0, "step": 0.5, "tooltip": "Multiplier of the cosine (100 as text-to-image papers report it; the CLIPScore paper uses 2.5)."}),
            **_common_learned(32),
        }, "optional": _fetch_input()}

    def load(self, path, model, scale, dtype, micro_batch, device, fetch_missing_weights=False):
        return (load_reward("clipscore", {"path": path, "model": model, "scale": scale, "dtype": dtype,
                                          "micro_batch": micro_batch}, device, fetch=fetch_missing_weights),)


class FDFOVLMReward(_RewardLoader):
    DESCRIPTION = "Ask a vision-language model a yes/no question about each image: 100 * sigmoid(logit(Yes) - logit(No)). The FDFO paper uses Qwen2.5-VL-7B-Instruct with the caption-matching question. Weights: models/fdfo_rewards/vlm/ (or a folder you pick)."

    @classmethod
    def INPUT_TYPES(cls):
        from ..fdfo_core.rewards.vlm import DEFAULT_QUESTION, DEFAULT_VLM

        return {"required": {
            "path": path_input("VLM folder (Qwen2.5-VL, Qwen2-VL, Qwen3-VL, SmolVLM, Idefics3, LLaVA)"),
            "question": ("STRING", {"default": DEFAULT_QUESTION, "multiline": True, "tooltip": (
                "The yes/no question; {prompt} is replaced by each image's prompt. Presets by name: caption_matching, "
                "professional_quality, photorealism.")}),
            "target": ("STRING", {"default": "Yes", "tooltip": "The answer whose probability is the reward (one token)."}),
            "contrast": ("STRING", {"default": "No", "tooltip": "The competing answer (one token)."}),
            "image_size": ("INT", {"default": 504, "min": 0, "max": 4096, "step": 8, "tooltip": "Images are resized to this square size first (504 in the paper); 0 keeps their size."}),
            "model": ("STRING", {"default": DEFAULT_VLM, "tooltip": "Hugging Face id, looked up in the offline cache and as a folder name when path is 'auto'."}),
            "scale": ("FLOAT", {"default": 100.0, "min": 0.0, "max": 1000.0, "step": 1.0, "tooltip": "Multiplier of the yes-probability."}),
            **_common_learned(4),
        }, "optional": _fetch_input()}

    def load(self, path, question, target, contrast, image_size, model, scale, dtype, micro_batch, device,
             fetch_missing_weights=False):
        if not question.strip():
            raise RewardError("vlm: the question is empty; write a yes/no question (use {prompt} for the image's prompt)")
        return (load_reward("vlm", {"path": path, "question": question, "target": target, "contrast": contrast,
                                    "image_size": image_size if image_size > 0 else "none", "model": model,
                                    "scale": scale, "dtype": dtype, "micro_batch": micro_batch}, device,
                            fetch=fetch_missing_weights),)


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


NO_FOLDER = "(none)"
NO_MODEL = "(none)"
PREFERENCE_SUBFOLDER = "preference"


def _comfy_dir(kind: str) -> Path:
    import folder_paths

    getter = folder_paths.get_input_directory if kind == "input" else folder_paths.get_output_directory
    return Path(getter()).resolve()


def reference_folders(root: Path | None = None) -> list[str]:
    """Sub-folders of ComfyUI's input folder that hold images (relative, with '/'), for the drop-down."""
    from ..fdfo_core.files.image_files import IMAGE_EXTENSIONS

    try:
        root = (root or _comfy_dir("input")).resolve()
    except Exception:
        return []
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if here != root and any(f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".") for f in filenames):
            found.append(here.relative_to(root).as_posix())
    return sorted(found)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(os.path.commonpath([str(r), str(path)]) == str(r) for r in roots)


def resolve_reference_folder(name: str, root: Path | None = None) -> Path:
    """The folder `name` inside ComfyUI's input folder; paths leading outside it are refused."""
    root = (root or _comfy_dir("input")).resolve()
    if not name or os.path.isabs(name) or "\\" in name:
        raise RewardError(f"reference folder {name!r}: give a folder inside ComfyUI's input folder ({root})")
    path = (root / name).resolve()
    if not _inside(path, [root]):
        raise RewardError(f"reference folder {name!r} is outside ComfyUI's input folder ({root}); put the images there")
    if not path.is_dir():
        raise RewardError(f"reference folder {name!r} does not exist in ComfyUI's input folder ({root})")
    return path


def _fingerprint(paths: list[Path]) -> str:
    """Names, sizes and modification times: changes when files are added, removed or rewritten."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


def composite_over_white(images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] composited over white where a ComfyUI MASK ([B, H, W] or
    [H, W], 1 = transparent: Load Image's mask is 1 - alpha) is set: what the folder input gives
    for the same RGBA file (`files.image_files` composites over white). Load Image's placeholder
    mask of an image without alpha (64 x 64 zeros) changes nothing. Raises RewardError when a
    mask of another size or batch is not all zeros."""
    if mask is None:
        return images
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    if m.shape[-2:] != images.shape[-2:] or m.shape[0] not in (1, images.shape[0]):
        if not bool(m.any()):
            return images
        raise RewardError(f"reference: the mask ({tuple(m.shape)}) does not fit the images ({tuple(images.shape)}); "
                          "connect the MASK of the same Load Image")
    alpha = (1.0 - m.clamp(0, 1)).to(images)[:, None]
    return images * alpha + (1.0 - alpha)


class FDFOReferenceStyleReward(_RewardLoader):
    DESCRIPTION = ("Style from reference images: how close each image is to your references in an image encoder's space "
                   "(CLIP, SigLIP, DINOv2 or the CSD style descriptor), 100 x cosine. Connect a batch of images (Load "
                   "Image) and/or choose a folder of images in ComfyUI/input. The content guard keeps the references' "
                   "subjects out: describe them in content_captions, or weight in the prompt. Weights: "
                   "models/fdfo_rewards/ (docs/rewards.md).")

    @classmethod
    def INPUT_TYPES(cls):
        from ..fdfo_core.rewards.image_encoders import ENCODER_KINDS

        return {"required": {
            "folder": ([NO_FOLDER] + reference_folders(), {"default": NO_FOLDER, "tooltip": (
                "A folder of reference images inside ComfyUI/input (PNG, JPEG, WebP, ...; any sizes). Used together with "
                "the images input when both are given.")}),
            "encoder": (list(ENCODER_KINDS) + ["auto"], {"default": "clip", "tooltip": (
                "The embedding space. clip: CLIP ViT-L/14 (content and style); siglip; dinov2: self-supervised, "
                "more about layout and texture; csd: the CSD style descriptor (Somepalli et al. 2024), trained to match "
                "artists' styles. auto: read from the chosen folder.")}),
            "path": path_input("Encoder weights folder"),
            "aggregation": (["topk", "mean_embedding"], {"default": "topk", "tooltip": (
                "topk: mean cosine to the k most similar references (keeps a varied set varied); mean_embedding: "
                "cosine to the average of all references.")}),
            "top_k": ("INT", {"default": 3, "min": 1, "max": 1000, "tooltip": "k for topk (capped at the number of references)."}),
            "content_captions": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "Content guard: what the references show (one per line or separated by |), e.g. 'a portrait of a "
                "woman'. Images that look like these subjects lose reward, so the style is learned without copying "
                "them. Empty: off.")}),
            "content_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05, "tooltip": (
                "Weight of the caption similarity that is subtracted.")}),
            "prompt_weight": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.05, "tooltip": (
                "Weight of a CLIP-score term with each image's own prompt (0.5 to 1 keeps the prompt's subject; 0: off).")}),
            "text_path": path_input("CLIP/SigLIP folder for the content guard (when the encoder has no text tower)"),
            "scale": ("FLOAT", {"default": 100.0, "min": 0.0, "max": 10000.0, "step": 1.0, "tooltip": (
                "Multiplies the whole reward (100: a cosine of 0.8 scores 80, the range of CLIP score).")}),
            **_common_learned(16),
        }, "optional": {
            "images": ("IMAGE", {"tooltip": "Reference images (a batch, e.g. from Load Image or a batch of several)."}),
            "mask": ("MASK", {"tooltip": (
                "Load Image's MASK for transparent references: the images are composited over white where the mask "
                "is set (transparent), as the folder input does; without it the colour under transparent pixels counts.")}),
            **_fetch_input(),
        }}

    @classmethod
    def IS_CHANGED(cls, folder=NO_FOLDER, **_):
        if not folder or folder == NO_FOLDER:
            return ""
        try:
            from ..fdfo_core.files.image_files import list_image_files

            return _fingerprint(list_image_files(resolve_reference_folder(folder)))
        except Exception as e:  # reported properly when the node runs
            return f"error {e}"

    def load(self, folder, encoder, path, aggregation, top_k, content_captions, content_weight, prompt_weight, text_path,
             scale, dtype, micro_batch, device, images=None, mask=None, fetch_missing_weights=False):
        from ..fdfo_core.files.image_files import ImageFileError, image_paths

        refs = []
        if images is not None:
            refs += list(composite_over_white(image_to_nchw(images), mask).unbind(0))
        if folder and folder != NO_FOLDER:
            try:  # the files themselves: the reward reads them micro_batch at a time
                refs += image_paths(resolve_reference_folder(folder))
            except ImageFileError as e:
                raise RewardError(f"reference: {e}") from None
        if not refs:
            raise RewardError("reference: connect reference images to the images input, or choose a folder of images "
                              "in ComfyUI/input")
        return (load_reward("reference", {
            "images": refs, "encoder": encoder, "path": path, "aggregation": aggregation, "top_k": top_k,
            "content_captions": content_captions, "content_weight": content_weight, "prompt_weight": prompt_weight,
            "text_path": text_path, "scale": scale, "dtype": dtype, "micro_batch": micro_batch}, device,
            fetch=fetch_missing_weights),)


def preference_models() -> list[str]:
    """Fitted preference models (.safetensors) in the reward folders' preference/ sub-folders."""
    from ..fdfo_core.rewards import reward_dirs

    found = set()
    try:
        dirs = reward_dirs()
    except Exception:
        return []
    for d in dirs:
        sub = d / PREFERENCE_SUBFOLDER
        if sub.is_dir():
            found.update(f"{PREFERENCE_SUBFOLDER}/{p.name}" for p in sub.glob("*.safetensors") if not p.name.startswith("."))
    return sorted(found)


def resolve_picks(text: str) -> list[Path]:
    """Picks files or run folders, one per line, relative to ComfyUI's output folder (absolute paths
    must lie inside the output or input folder)."""
    roots = [_comfy_dir("output"), _comfy_dir("input")]
    out = []
    for line in text.splitlines():
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        p = Path(name).expanduser()
        p = (p if p.is_absolute() else roots[0] / p).resolve()
        if not _inside(p, roots):
            raise RewardError(f"picks {name!r}: give a picks.jsonl (or its run folder) inside ComfyUI's output or input "
                              f"folder ({roots[0]}, {roots[1]})")
        out.append(p)
    return out


def _preference_save_path(name: str) -> Path:
    from ..fdfo_core.rewards import reward_dirs

    name = name.strip()
    if Path(name).name != name or name.startswith("."):
        raise RewardError(f"save_as {name!r}: give a plain file name (it goes to models/fdfo_rewards/{PREFERENCE_SUBFOLDER}/)")
    if not name.endswith(".safetensors"):
        name += ".safetensors"
    dirs = reward_dirs()
    if not dirs:
        raise RewardError("save_as: no reward folder is known (models/fdfo_rewards)")
    return dirs[0] / PREFERENCE_SUBFOLDER / name


class FDFOPreferenceReward:
    CATEGORY = f"{CATEGORY}/rewards"
    RETURN_TYPES = (REWARD, "STRING")
    RETURN_NAMES = ("reward", "report")
    OUTPUT_TOOLTIPS = (OUTPUT_TOOLTIP, "What the model was fitted on and its held-out accuracy (the share of held-out "
                       "picks it predicts).")
    FUNCTION = "load"
    DESCRIPTION = ("Your taste as a reward: a small Bradley-Terry model fitted on the pairs you picked (picks.jsonl from "
                   "a picking run), on frozen image embeddings (CLIP, SigLIP, DINOv2 or CSD). Or load a model fitted "
                   "before. The report gives its held-out accuracy.")

    @classmethod
    def INPUT_TYPES(cls):
        from ..fdfo_core.rewards.image_encoders import ENCODER_KINDS

        return {"required": {
            "picks": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "picks.jsonl files or run folders, one per line, relative to ComfyUI/output (a picking run of the FDFO "
                "Trainer writes output/fdfo/<lora name>/picks.jsonl). Several files are fitted together. Leave empty to "
                "use model_file.")}),
            "model_file": ([NO_MODEL] + preference_models(), {"default": NO_MODEL, "tooltip": (
                "A preference model fitted before (models/fdfo_rewards/preference/). Used when picks is empty.")}),
            "encoder": (list(ENCODER_KINDS), {"default": "clip", "tooltip": "The frozen image embeddings the model is fitted on."}),
            "encoder_path": path_input("Encoder weights folder"),
            "head": (["linear", "mlp"], {"default": "linear", "tooltip": (
                "linear: one weight per embedding dimension (robust with few picks); mlp: one hidden layer (needs "
                "hundreds of picks).")}),
            "hidden": ("INT", {"default": 64, "min": 1, "max": 4096, "tooltip": "Hidden units of the mlp head."}),
            "use_prompt": ("BOOLEAN", {"default": False, "tooltip": (
                "Let the preference depend on the prompt (CLIP/SigLIP encoders only).")}),
            "holdout": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 0.9, "step": 0.05, "tooltip": (
                "Share of picks held out to measure accuracy (the saved model is then fitted on all of them).")}),
            "save_as": ("STRING", {"default": "", "tooltip": (
                "File name to save the fitted model as, in models/fdfo_rewards/preference/ (empty: not saved). Use it "
                "later with model_file, or on the command line with --reward preference --reward-opt preference.path=...")}),
            "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.1, "tooltip": (
                "Multiplies the score (a difference of 1 means the model prefers the image 73 % of the time).")}),
            **_common_learned(16),
        }}

    @classmethod
    def IS_CHANGED(cls, picks="", model_file=NO_MODEL, **_):
        try:
            files = []
            for p in resolve_picks(picks or ""):
                files.append(p / "picks.jsonl" if p.is_dir() else p)
            return _fingerprint(files) + str(model_file)
        except Exception as e:  # reported properly when the node runs
            return f"error {e}"

    def load(self, picks, model_file, encoder, encoder_path, head, hidden, use_prompt, holdout, save_as, scale, dtype,
             micro_batch, device):
        from ..fdfo_core.rewards.preference import fit_preference, load_preference_model
        from ..fdfo_core.files.storage import StorageError

        files = resolve_picks(picks or "")
        lines: list[str] = []
        dev = torch_device(device)
        with torch.inference_mode(False):
            try:
                if files:
                    pm = fit_preference(files, encoder=encoder, encoder_path=widget_option(encoder_path), head=head, hidden=hidden,
                                        use_prompt=use_prompt, holdout=holdout, dtype=dtype, device=dev, log=lines.append)
                    if save_as and save_as.strip():
                        saved = pm.save(_preference_save_path(save_as))
                        lines.append(f"saved to {saved}")
                elif model_file and model_file != NO_MODEL:
                    pm = load_preference_model(model_file, encoder_path=widget_option(encoder_path), dtype=dtype, device=dev)
                    lines.append(f"loaded {model_file}: {pm.report.summary()}")
                else:
                    raise RewardError("preference: give picks (picks.jsonl files or run folders) or choose a model_file")
                reward = pm.as_reward(scale=scale, micro_batch=micro_batch)
            except (RewardError, StorageError):
                raise
            except Exception as e:
                raise RewardError(f"reward 'preference' could not be built: {type(e).__name__}: {e}") from e
        return (reward, "\n".join(lines))




NODES = {
    "FDFOSimpleReward": (FDFOSimpleReward, "FDFO Simple Reward"),
    "FDFOToyAlignmentReward": (FDFOToyAlignmentReward, "FDFO Toy Alignment Reward"),
    "FDFOPickScoreReward": (FDFOPickScoreReward, "FDFO PickScore Reward"),
    "FDFOHPSv2Reward": (FDFOHPSv2Reward, "FDFO HPSv2 Reward"),
    "FDFOAestheticReward": (FDFOAestheticReward, "FDFO Aesthetic Reward"),
    "FDFOClipScoreReward": (FDFOClipScoreReward, "FDFO CLIP Score Reward"),
    "FDFOVLMReward": (FDFOVLMReward, "FDFO VLM Yes/No Reward"),
    "FDFORemoteReward": (FDFORemoteReward, "FDFO Remote Reward"),
    "FDFOReferenceStyleReward": (FDFOReferenceStyleReward, "FDFO Reference Style Reward"),
    "FDFOPreferenceReward": (FDFOPreferenceReward, "FDFO Preference Reward"),
}
