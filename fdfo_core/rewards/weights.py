"""Where reward weights live, and how they are read.

Lookup order for every learned reward (first match wins):

1. an explicit ``path`` option: an existing folder or file, or a folder *name* resolved inside
   the reward folders below (so a ComfyUI drop-down can pass ``"Qwen2.5-VL-3B-Instruct"``);
2. the reward folders, each holding one sub-folder per reward (``pickscore/``, ``hpsv2/``, ...):

   - inside ComfyUI, every folder ComfyUI knows as ``fdfo_rewards`` (by default
     ``ComfyUI/models/fdfo_rewards``; add more in ``extra_model_paths.yaml``). `folder_paths`
     is only looked up in `sys.modules`, so fdfo_core never imports ComfyUI itself;
   - the folders in the environment variable ``FDFO_REWARDS_DIR`` (``os.pathsep``-separated),
     for the command line;
   - ``ComfyUI/models/fdfo_rewards`` when this package is installed as
     ``ComfyUI/custom_nodes/<name>/`` and run from the command line;

3. the Hugging Face cache, offline only (``local_files_only=True``; nothing is downloaded).

When nothing is found the `RewardError` names the folder to create and the repository to
download from. Checkpoints are read with safetensors or ``torch.load(weights_only=True)``, never
with unrestricted unpickling.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from .base import RewardError

COMFY_FOLDER_NAME = "fdfo_rewards"
ENV_VAR = "FDFO_REWARDS_DIR"


def _comfy_dirs() -> list[Path]:
    fp = sys.modules.get("folder_paths")
    if fp is None:
        return []
    try:
        if COMFY_FOLDER_NAME not in fp.folder_names_and_paths:
            fp.add_model_folder_path(COMFY_FOLDER_NAME, os.path.join(fp.models_dir, COMFY_FOLDER_NAME))
        return [Path(p) for p in fp.get_folder_paths(COMFY_FOLDER_NAME)]
    except Exception:  # an unusual ComfyUI; fall back to its models folder
        models_dir = getattr(fp, "models_dir", None)
        return [Path(models_dir) / COMFY_FOLDER_NAME] if models_dir else []


def register_comfy_folder() -> None:
    """Register ``models/fdfo_rewards`` with ComfyUI's `folder_paths` (no-op outside ComfyUI)."""
    _comfy_dirs()


def _installed_comfy_dir() -> list[Path]:
    here = Path(__file__).resolve()
    # <ComfyUI>/custom_nodes/<package>/fdfo_core/rewards/weights.py
    if len(here.parents) > 4 and here.parents[3].name == "custom_nodes":
        return [here.parents[4] / "models" / COMFY_FOLDER_NAME]
    return []


def reward_dirs() -> list[Path]:
    """The reward folders, in lookup order (they need not exist)."""
    dirs = _comfy_dirs()
    env = os.environ.get(ENV_VAR, "")
    dirs += [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    dirs += _installed_comfy_dir()
    seen, out = set(), []
    for d in dirs:
        key = str(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def list_reward_folders() -> list[str]:
    """Names of the sub-folders present in the reward folders (for drop-down menus)."""
    names = set()
    for d in reward_dirs():
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(names)


def hf_cached(repo_id: str, filename: str | None = None) -> Path | None:
    """A repository snapshot folder (or one file) from the Hugging Face cache, offline; None when absent."""
    if not repo_id:
        return None
    try:
        import huggingface_hub
    except ImportError:
        return None
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    try:
        if filename is None:
            p = huggingface_hub.snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir)
        else:
            p = huggingface_hub.hf_hub_download(repo_id, filename, local_files_only=True, cache_dir=cache_dir)
    except Exception:
        return None
    return Path(p) if p else None


@dataclass
class WeightSource:
    """One thing a reward needs on disk, and where people get it.

    `folder` is the sub-folder name inside a reward folder; `alt_folders` are further names tried
    (shared components such as the CLIP-H tokenizer). `check(path)` returns None when `path` holds
    what is needed, else a short description of what is missing.
    """

    what: str  # e.g. "PickScore_v1"
    folder: str
    repo: str = ""  # Hugging Face repository id, also used for the offline cache lookup
    url: str = ""  # where to download (defaults to the Hugging Face page of `repo`)
    files: str = ""  # human description of the files, e.g. "config.json + model.safetensors"
    check: Callable[[Path], str | None] = lambda p: None if p.is_dir() else "not a folder"
    alt_folders: Sequence[str] = field(default_factory=tuple)
    hf_file: str | None = None  # look up a single file in the cache instead of a snapshot

    @property
    def link(self) -> str:
        return self.url or (f"https://huggingface.co/{self.repo}" if self.repo else "")

    def hint(self) -> str:
        dirs = reward_dirs()
        where = (
            f"{dirs[0] / self.folder}"
            if dirs
            else f"$FDFO_REWARDS_DIR/{self.folder} (set {ENV_VAR} to a folder, or run inside ComfyUI: "
            f"ComfyUI/models/{COMFY_FOLDER_NAME}/{self.folder})"
        )
        src = f" ({self.link}{': ' + self.files if self.files else ''})" if self.link or self.files else ""
        return f"put {self.what}{src} in {where}, or pass its location with the path option"


def resolve_named(path: str | os.PathLike) -> Path | None:
    """An existing file or folder: `path` itself, or a relative name inside one of the reward folders."""
    return _resolve_named(path)


def _resolve_named(path: str | os.PathLike) -> Path | None:
    p = Path(path).expanduser()
    if p.exists():
        return p
    if not p.is_absolute():
        for d in reward_dirs():
            if (d / p).exists():
                return d / p
    return None


def locate(source: WeightSource, path: str | os.PathLike | None = None, reward: str = "", use_hf_cache: bool = True,
           extra_candidates: Iterable[Path] = ()) -> Path:
    """Find `source` on disk (see the module docstring for the order) or raise a helpful RewardError."""
    prefix = f"{reward}: " if reward else ""
    if path:
        p = _resolve_named(path)
        if p is None:
            raise RewardError(f"{prefix}{source.what} not found at {path!r}; {source.hint()}")
        problem = source.check(p)
        if problem:
            raise RewardError(f"{prefix}{p} does not hold {source.what}: {problem}; {source.hint()}")
        return p
    tried = []
    candidates = list(extra_candidates)
    for d in reward_dirs():
        candidates += [d / name for name in (source.folder, *source.alt_folders)]
    for c in candidates:
        tried.append(str(c))
        if c.exists() and source.check(c) is None:
            return c
    if use_hf_cache and source.repo:
        c = hf_cached(source.repo, source.hf_file)
        if c is not None and source.check(c) is None:
            return c
        tried.append(f"Hugging Face cache ({source.repo})")
    looked = f" (looked in: {', '.join(tried)})" if tried else ""
    raise RewardError(f"{prefix}{source.what} not found{looked}; {source.hint()}")


# ---- checks -----------------------------------------------------------------------------------

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model")


def has_transformers_model(p: Path) -> str | None:
    if not p.is_dir():
        return "not a folder"
    if not (p / "config.json").is_file():
        return "config.json is missing"
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        return "no model.safetensors / pytorch_model.bin (or their sharded index)"
    return None


def has_clip_processor(p: Path) -> str | None:
    if not p.is_dir():
        return "not a folder"
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        return "no tokenizer files (tokenizer.json or vocab.json + merges.txt)"
    return None


def has_file(*names: str) -> Callable[[Path], str | None]:
    def check(p: Path) -> str | None:
        if p.is_file():  # a file given explicitly is taken as it is
            return None
        if p.is_dir() and any((p / n).is_file() for n in names):
            return None
        return f"none of {', '.join(names)}"

    return check


def pick_file(p: Path, names: Sequence[str]) -> Path:
    """`p` itself when it is a file, else the first of `names` inside folder `p`."""
    if p.is_file():
        return p
    for n in names:
        if (p / n).is_file():
            return p / n
    raise RewardError(f"none of {', '.join(names)} in {p}")


# ---- loading ----------------------------------------------------------------------------------


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # refuses arbitrary pickles by design
        raise RewardError(
            f"cannot read {path} safely with torch.load(weights_only=True): {e}. The file holds more than "
            "tensors; re-save only its state dict (or convert it to .safetensors)"
        ) from e
    return obj


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, gpu_default: torch.dtype = torch.float32) -> torch.dtype:
    """Parse the dtype option. 'auto': float32 on CPU, `gpu_default` on CUDA."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or "auto").lower().replace("torch.", "")
    if name == "auto":
        if device.type == "cuda" and gpu_default == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return torch.float16
        return gpu_default if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if name not in table:
        raise RewardError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return table[name]


def dtype_kwargs(dtype: torch.dtype) -> dict:
    """The from_pretrained keyword for a dtype: `dtype` in transformers >= 4.56, `torch_dtype` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}
