"""LoRA files with ComfyUI-native keys, alpha, and FDFO metadata.

File layout (what ComfyUI's LoraLoader / LoraLoaderModelOnly and its own trainer use):
    diffusion_model.<comfy module>.lora_down.weight   [rank, in]
    diffusion_model.<comfy module>.lora_up.weight     [out, rank]
    diffusion_model.<comfy module>.alpha              scalar; ComfyUI scales by alpha / rank
PEFT files carry no alpha and load in ComfyUI at scale 1, i.e. at the wrong strength when
alpha != rank: writing `.alpha` is what makes the file load exactly.

ComfyUI fuses q, k, v into one `qkv` linear (Flux single blocks fuse them with the MLP input
too); diffusers keeps them separate. A set of separate LoRAs on the parts of a fused linear is
written exactly as one LoRA of the fused module: down = concat(A_q, A_k, A_v), up =
block-diagonal(B_q, B_k, B_v) placed at each part's rows, alpha = scale * total rank.
`comfy_to_diffusers` undoes this (recovering the separate rank-r factors when the up matrix is
block-diagonal), so a file round-trips into a diffusers pipeline with identical velocities.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..files import storage
from ..families import Family, FamilyError, FusedPart, LoraMapError, get_family

PREFIX = "diffusion_model."
METADATA_PREFIX = "fdfo."


class LoraFileError(ValueError):
    """A LoRA file does not fit the model it is loaded into; the message says why and what to do."""


def diffusers_to_comfy_module(
    family: str | Family, name: str, out_features: Callable[[str], int]
) -> FusedPart:
    """Map a diffusers transformer module name to the ComfyUI module (and row slice) it is part of,
    by the family's `lora_map` (`fdfo_core.families`).

    out_features(diffusers_module_name) gives a module's output size (to locate its rows).
    Raises LoraFileError for an unknown family or a module the family does not map.
    """
    fam = lora_family(family)
    try:
        return fam.lora_map.to_comfy(name, out_features)
    except LoraMapError as e:
        raise LoraFileError(f"{fam.name}: {e}") from e


def lora_family(family: str | Family) -> Family:
    """The registered family (LoraFileError for an unknown name, e.g. from a file's metadata)."""
    try:
        return get_family(family)
    except FamilyError as e:
        raise LoraFileError(str(e)) from e


def fuse_lora(
    family: str | Family,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    scale: float,
    out_features: Callable[[str], int],
) -> dict[str, torch.Tensor]:
    """ComfyUI-native LoRA tensors from per-diffusers-module factors {name: (A [r, in], B [out, r])}.

    The effective update of every module is scale * B @ A (peft: scale = alpha / r).
    """
    groups: dict[str, list[tuple[FusedPart, torch.Tensor, torch.Tensor]]] = {}
    for name, (a, b) in factors.items():
        part = diffusers_to_comfy_module(family, name, out_features)
        groups.setdefault(part.comfy_module, []).append((part, a, b))
    return fuse_parts(groups, scale)


def fuse_parts(
    groups: Mapping[str, list[tuple[FusedPart, torch.Tensor, torch.Tensor]]], scale: float
) -> dict[str, torch.Tensor]:
    """ComfyUI-native LoRA tensors of fused modules: {comfy module: [(part, A [r, in], B [rows, r])]}
    -> one LoRA per module with down = concat(A_p), up = B_p placed at each part's rows (block
    diagonal), alpha = scale * total rank, so ComfyUI's alpha / rank gives back `scale`."""
    out: dict[str, torch.Tensor] = {}
    for comfy, items in sorted(groups.items()):
        items = sorted(items, key=lambda it: it[0].offset)
        fused_rows = items[0][0].fused_rows
        rank = sum(a.shape[0] for _, a, _ in items)
        down = torch.cat([a.float() for _, a, _ in items])
        up = torch.zeros(fused_rows, rank)
        col = 0
        for part, a, b in items:
            up[part.offset : part.offset + part.rows, col : col + a.shape[0]] = b.float()
            col += a.shape[0]
        out[f"{PREFIX}{comfy}.lora_down.weight"] = down.contiguous()
        out[f"{PREFIX}{comfy}.lora_up.weight"] = up.contiguous()
        out[f"{PREFIX}{comfy}.alpha"] = torch.tensor(float(scale * rank))
    return out


def comfy_to_diffusers(
    family: str | Family,
    tensors: Mapping[str, torch.Tensor],
    module_names: list[str],
    out_features: Callable[[str], int],
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-diffusers-module factors {name: (A, B)} with the scale folded into B (effective
    update B @ A), for the diffusers modules `module_names` that the file touches.

    Raises LoraFileError when the file has modules this model does not have.
    """
    by_comfy: dict[str, list[tuple[str, FusedPart]]] = {}
    for name in module_names:
        try:
            part = diffusers_to_comfy_module(family, name, out_features)
        except LoraFileError:
            continue
        by_comfy.setdefault(part.comfy_module, []).append((name, part))
    in_file = lora_modules(tensors)
    unknown = sorted(set(in_file) - set(by_comfy))
    if unknown:
        raise LoraFileError(
            f"this LoRA has {len(unknown)} module(s) the {lora_family(family).name} model does not have (e.g. {unknown[0]!r}); "
            "it was trained for another architecture or model size"
        )
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for comfy in in_file:
        down, up, alpha = in_file[comfy]
        rank = down.shape[0]
        scale = (float(alpha) / rank) if alpha is not None else 1.0
        parts = sorted(by_comfy[comfy], key=lambda np_: np_[1].offset)
        if up.shape[0] != parts[0][1].fused_rows:
            raise LoraFileError(
                f"LoRA module {comfy!r} has {up.shape[0]} output rows but the model's has "
                f"{parts[0][1].fused_rows}: the LoRA is for a different model size"
            )
        for name, part in parts:
            b = up[part.offset : part.offset + part.rows].float() * scale
            used = (b != 0).any(dim=0).nonzero().flatten()
            if used.numel() == 0:
                continue
            cols = torch.arange(int(used.min()), int(used.max()) + 1)
            out[name] = (down[cols].float().contiguous(), b[:, cols].contiguous())
    return out


def lora_modules(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """{comfy module: (down, up, alpha or None)} of a ComfyUI-format LoRA state dict."""
    mods: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = re.fullmatch(re.escape(PREFIX) + r"(.+)\.(lora_down\.weight|lora_up\.weight|alpha)", key)
        if m is None:
            raise LoraFileError(
                f"unexpected key {key!r}: FDFO LoRA files use ComfyUI-native keys "
                f"'{PREFIX}<module>.lora_up.weight / .lora_down.weight / .alpha'"
            )
        mods.setdefault(m.group(1), {})[m.group(2)] = t
    out = {}
    for mod, parts in mods.items():
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise LoraFileError(f"LoRA module {mod!r} lacks its lora_down or lora_up weight")
        out[mod] = (parts["lora_down.weight"], parts["lora_up.weight"], parts.get("alpha"))
    return out


def save_lora(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any], dtype: torch.dtype = torch.float32,
    what: str = "LoRA file",
    standard_metadata: Callable[[Mapping[str, torch.Tensor]], Mapping[str, str]] | None = None,
) -> Path:
    """Write a .safetensors LoRA atomically (storage: a failed write raises StorageError and leaves
    nothing behind). Metadata values are stored as JSON strings under `fdfo.`.

    standard_metadata(tensors as written) -> keys stored as they are, e.g. the SAI model-spec
    `modelspec.*` keys (fdfo_core/backends/modelspec.py), which hash the written tensors."""
    meta = {"format": "pt"}
    for k, v in metadata.items():
        meta[METADATA_PREFIX + k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    data = {k: (v.to(dtype) if v.ndim else v.float()).contiguous().cpu() for k, v in tensors.items()}
    if standard_metadata is not None:
        for k, v in standard_metadata(data).items():
            if k.startswith(METADATA_PREFIX) or k == "format":
                raise ValueError(f"standard metadata key {k!r} would overwrite FDFO's own")
            meta[k] = str(v)
    return storage.write_bytes(path, safetensors_bytes(data, metadata=meta), what)


def load_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a LoRA file: (tensors, fdfo metadata with JSON values decoded)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LoRA file {path} does not exist")
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    return tensors, _decode_metadata(raw)


def read_lora_metadata(path: str | Path) -> dict[str, Any]:
    """The fdfo metadata of a LoRA file (JSON values decoded) without reading its tensors; {} for
    a LoRA written by another tool."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a file that is not one
        raise LoraFileError(f"{path} is not a .safetensors LoRA file ({e})") from e
    return _decode_metadata(raw)


def _decode_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        if not k.startswith(METADATA_PREFIX):
            continue
        try:
            meta[k[len(METADATA_PREFIX):]] = json.loads(v)
        except json.JSONDecodeError:
            meta[k[len(METADATA_PREFIX):]] = v
    return meta


def check_family(meta: Mapping[str, Any], family: str, path: str | Path) -> None:
    found = meta.get("base_model_family")
    if found is not None and found != family:
        raise LoraFileError(
            f"{path} is a LoRA for a {found} model, but the model loaded is {family}; "
            f"load it into a {found} model or train a new LoRA for this one"
        )


def lora_file_owner(path: str | Path) -> str | None:
    """What a LoRA file is, in words for a message: "the LoRA of run <run id>" (its `fdfo.run_id`),
    "an FDFO LoRA from before run ids", "a LoRA from another tool (no FDFO metadata)", or "a file
    that is not a LoRA"; None when `path` does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        meta = read_lora_metadata(path)
    except (LoraFileError, OSError):
        return "a file that is not a LoRA"
    run_id = meta.get("run_id")
    if isinstance(run_id, str) and run_id:
        return f"the LoRA of run {run_id}"
    return "an FDFO LoRA from before run ids" if meta else "a LoRA from another tool (no FDFO metadata)"


def publish_target(folder: str | Path, name: str, run_id: str | None, own_copy: str | Path | None = None
                   ) -> tuple[Path, str | None]:
    """Where run `run_id` may write its LoRA file `name` (e.g. "portrait.safetensors") in a folder
    other runs and tools share (ComfyUI's models/loras) without overwriting what they trained.

    `folder/name` when it is free or holds this run's own file (its `fdfo.run_id` is `run_id`, or
    its bytes equal `own_copy`, this run's file in its run folder): a later epoch of the same run
    replaces it. Otherwise the file there is kept unchanged and the run's file gets its own name,
    `<stem>-<first 8 digits of run_id>.safetensors` (then `-2`, `-3`, ... should that be taken too).
    Returns (path, note): note says whose file was kept and under which name the run's LoRA is,
    None when `folder/name` itself is used.
    """
    import filecmp

    folder = Path(folder)
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    tag = f"-{run_id[:8]}" if run_id else ""
    candidates = [name] + [f"{stem}{tag}{'' if i == 1 else f'-{i}'}.safetensors" for i in range(1 if tag else 2, 1000)]
    kept = None
    for candidate in candidates:
        path = folder / candidate
        owner = lora_file_owner(path)
        ours = owner is None or (run_id is not None and owner == f"the LoRA of run {run_id}") or (
            own_copy is not None and Path(own_copy).exists() and filecmp.cmp(path, own_copy, shallow=False))
        if ours:
            if kept is None:
                return path, None
            return path, (f"{folder / name} is {kept}, not this run's: it is kept unchanged, and this run's LoRA "
                          f"is {path.name} beside it (nothing was overwritten; rename either file as you like)")
        if kept is None:
            kept = owner
    raise LoraFileError(f"{folder} holds {len(candidates)} LoRA files named like {name} from other runs; "
                        "give this run another name")
