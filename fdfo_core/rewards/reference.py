"""The reference-image reward: how close an image is to a set of reference images (a style).

With e(.) a frozen image encoder's L2-normalised embedding (CLIP, SigLIP, DINOv2 or CSD, see
`image_encoders`) and references r_1..r_R:

    style(x) = mean of the k largest cos(e(x), e(r_j))          aggregation "topk" (default, k = 3)
             = cos(e(x), normalize(mean_j e(r_j)))               aggregation "mean_embedding"

Top-k rewards being close to *some* references (a varied set keeps its variety); the mean
embedding rewards the set's average look (CSD's "prototypical style", Somepalli et al. 2024, §5).

Content guard: a similarity reward alone also pulls the references' *subjects* into every image.
Two optional terms, in the space of a CLIP / SigLIP dual encoder (the encoder itself when it is
one, else `text_path`), keep the subject under the prompt's control:

    reward(x, p) = scale * ( style(x)
                             - content_weight * max_c cos(t(x), t(caption_c))   # the references' subjects
                             + prompt_weight  * cos(t(x), t(p)) )              # what the prompt asks for

`content_captions` describe what the references show ("a woman's portrait | a harbour"); an
image that looks like those subjects loses reward, so the style is learned without copying them.
The prompt term is CLIP score against the image's own prompt. `scale` (default 100) gives the
range of CLIP score and PickScore: a cosine of 0.8 scores 80.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from ..files.image_files import ImageFileError
from .base import RewardError, to_nchw
from .clip_common import ModelReward, as_device
from .image_encoders import ENCODER_KINDS, ImageEncoder, load_image_encoder
from .registry import register_reward

AGGREGATIONS = ("topk", "mean_embedding")


def split_list(text: str | Sequence[str] | None, separators: str = "\n|") -> list[str]:
    """'a | b\\nc' -> ['a', 'b', 'c'] (blank items and '#' comment lines dropped); lists pass through."""
    if text is None:
        return []
    if not isinstance(text, str):
        return [str(t).strip() for t in text if str(t).strip()]
    items = [text]
    for sep in separators:
        items = [part for item in items for part in item.split(sep)]
    return [t.strip() for t in items if t.strip() and not t.strip().startswith("#")]


def split_paths(value: str | os.PathLike | Sequence) -> list:
    """The `images` option as a list: one path, a list, or several paths separated by newlines or
    the system path separator (':' on Linux and macOS, ';' on Windows)."""
    if isinstance(value, os.PathLike):
        return [value]
    if isinstance(value, str):
        if Path(value.strip()).expanduser().exists():
            return [value.strip()]
        return split_list(value, "\n" + os.pathsep)
    return list(value)


def images_sha256(images: Sequence[torch.Tensor], h=None) -> str:
    """sha256 over the images' sizes and 8-bit pixels (float rounding noise does not change it).
    `h`: a hashlib object to continue (images hashed in several calls give the digest of all)."""
    import hashlib

    h = h if h is not None else hashlib.sha256()
    for im in images:
        pixels = (im.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
        h.update(str(tuple(pixels.shape)).encode())
        h.update(pixels.numpy().tobytes())
    return h.hexdigest()


def embed_references(encoder: ImageEncoder, references: Sequence, batch: int) -> tuple[torch.Tensor, str]:
    """Embed references ([3, H, W] / [1, 3, H, W] tensors, or image files read when their turn
    comes) `batch` at a time: ([R, D] float32 unit embeddings on the CPU, `images_sha256` of all).
    At most `batch` decoded files are held at once, so the peak memory does not grow with the
    number of references (a folder of 1000 photos decoded at once would take ~19 GB)."""
    import hashlib

    from ..files.image_files import read_image

    h = hashlib.sha256()
    out = []
    for start in range(0, len(references), batch):
        chunk = [read_image(r) if isinstance(r, (str, os.PathLike)) else to_nchw(r)[0].clamp(0, 1)
                 for r in references[start : start + batch]]
        images_sha256(chunk, h)
        out.append(encoder.embed_images(chunk, batch=batch).float().cpu())
        del chunk
    return torch.cat(out), h.hexdigest()


class ReferenceStyle(ModelReward):
    """See the module docstring. `references`: [3, H, W] images (any sizes), image file paths (read
    `micro_batch` at a time: `embed_references`), or one NCHW/NHWC batch."""

    name = "reference"
    differentiable = True

    def __init__(self, encoder: ImageEncoder, references: Sequence[torch.Tensor] | torch.Tensor,
                 aggregation: str = "topk", top_k: int = 3, scale: float = 100.0,
                 text_encoder: ImageEncoder | None = None, content_captions: Sequence[str] = (),
                 content_weight: float = 1.0, prompt_weight: float = 0.0, micro_batch: int = 16, device=None,
                 reference_names: Sequence[str] = ()):
        super().__init__(micro_batch=micro_batch, device=device, dtype=encoder.dtype)
        if aggregation not in AGGREGATIONS:
            raise RewardError(f"reference: unknown aggregation {aggregation!r}; use one of {', '.join(AGGREGATIONS)}")
        if int(top_k) < 1:
            raise RewardError(f"reference: top_k must be at least 1, got {top_k}")
        self.encoder = encoder
        self.aggregation = aggregation
        self.top_k = int(top_k)
        self.scale = float(scale)
        self.content_captions = list(content_captions)
        self.content_weight = float(content_weight)
        self.prompt_weight = float(prompt_weight)
        uses_text = bool(self.content_captions and self.content_weight) or bool(self.prompt_weight)
        self.text_encoder = (text_encoder or encoder) if uses_text else None
        if self.text_encoder is not None and not self.text_encoder.has_text:
            raise RewardError(
                f"reference: the content guard (content_captions / prompt_weight) needs a CLIP or SigLIP model with "
                f"its text tower, and {self.text_encoder.describe()} cannot embed text ({self.text_encoder.text_problem}); "
                "set text_path to a CLIP or SigLIP folder, or leave content_captions empty and prompt_weight at 0"
            )
        if torch.is_tensor(references):
            references = list(to_nchw(references).unbind(0))
        references = list(references)
        if not references:
            raise RewardError("reference: no reference images")
        self.reference_names = list(reference_names) or [
            str(r) if isinstance(r, (str, os.PathLike)) else f"image {i}" for i, r in enumerate(references)]
        try:
            self.reference_embeddings, self.reference_sha256 = embed_references(encoder, references, max(1, micro_batch))
        except ImageFileError as e:
            raise RewardError(f"reference: {e}") from None
        self.caption_embeddings = (self.text_encoder.embed_texts(self.content_captions).float()
                                   if self.text_encoder is not None and self.content_captions else None)
        self.to(self.device)

    def record_options(self, options: dict) -> dict:
        """Options as a run records them (`run.definition`): the reference images by count and a
        content hash, so a resume notices changed references whether they came from a folder or
        from tensors (a tensor's text form would be huge, and abbreviated)."""
        out = dict(options)
        images = out.get("images")
        source = images if isinstance(images, (str, os.PathLike)) else "images given as tensors"
        out["images"] = {"source": str(source), "count": self.num_references, "sha256": self.reference_sha256}
        return out

    @property
    def num_references(self) -> int:
        return int(self.reference_embeddings.shape[0])

    def torch_modules(self):
        mods = [self.encoder.model]
        if self.text_encoder is not None and self.text_encoder is not self.encoder:
            mods.append(self.text_encoder.model)
        return mods

    def to(self, device):
        super().to(device)
        for enc in {id(e): e for e in (getattr(self, "encoder", None), getattr(self, "text_encoder", None)) if e}.values():
            enc.to(self.device)
        for attr in ("reference_embeddings", "caption_embeddings"):
            t = getattr(self, attr, None)
            if t is not None:
                setattr(self, attr, t.to(self.device))
        return self

    # --- scoring ----------------------------------------------------------------------------

    def style_similarity(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[N, D] unit image embeddings -> [N] style term (see the module docstring)."""
        refs = self.reference_embeddings.to(embeddings.device)
        if self.aggregation == "mean_embedding":
            center = refs.mean(0)
            center = center / center.norm().clamp_min(1e-12)
            return embeddings @ center
        sims = embeddings @ refs.T
        k = min(self.top_k, sims.shape[1])
        return sims.topk(k, dim=-1).values.mean(-1)

    def components(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The unscaled terms: style, content (max caption similarity) and prompt (cosine), each [N]."""
        emb = self.encoder(images)
        out = {"style": self.style_similarity(emb)}
        if self.text_encoder is not None:
            t_img = emb if self.text_encoder is self.encoder else self.text_encoder(images)
            if self.caption_embeddings is not None and self.content_weight:
                out["content"] = (t_img @ self.caption_embeddings.T).max(dim=-1).values
            if self.prompt_weight:
                out["prompt"] = (t_img * self.text_encoder.embed_texts(prompts)).sum(-1)
        return out

    def _score(self, images, prompts):
        parts = self.components(images, prompts)
        total = parts["style"]
        if "content" in parts:
            total = total - self.content_weight * parts["content"]
        if "prompt" in parts:
            total = total + self.prompt_weight * parts["prompt"]
        return self.scale * total

    def describe(self) -> str:
        agg = f"top{min(self.top_k, self.num_references)}" if self.aggregation == "topk" else "mean"
        extra = ""
        if self.caption_embeddings is not None:
            extra += f", -{self.content_weight:g}*content({len(self.content_captions)} captions)"
        if self.prompt_weight:
            extra += f", +{self.prompt_weight:g}*prompt"
        return f"reference({self.encoder.describe()}, {self.num_references} images, {agg}{extra}, scale {self.scale:g})"


@register_reward("reference", "closeness to reference images (a style) in CLIP/SigLIP/DINOv2/CSD space, 100 * cos")
def _reference(images=None, encoder: str = "auto", path: str | None = None, model: str | None = None,
               aggregation: str = "topk", top_k: int = 3, content_captions: str | None = None,
               content_weight: float = 1.0, prompt_weight: float = 0.0, text_path: str | None = None,
               scale: float = 100.0, recursive: bool = False, dtype: str = "auto", micro_batch: int = 16,
               device=None) -> ReferenceStyle:
    """images: a folder of reference images (or files / folders separated by newlines or the path
    separator, or an image tensor); encoder: clip, siglip, dinov2, csd or auto; path / model: the
    encoder's weights; text_path: a CLIP/SigLIP folder for the content guard when the encoder has
    no text tower."""
    from ..files.image_files import ImageFileError, image_paths

    if images is None or (isinstance(images, str) and not images.strip()):
        raise RewardError(
            "reference: give the reference images: a folder (--reward-opt reference.images=/path/to/folder on the "
            "command line, or the images / folder inputs of the FDFO Reference Style Reward node)"
        )
    if encoder not in ("auto", *ENCODER_KINDS):
        raise RewardError(f"reference: unknown encoder {encoder!r}; choose auto, {', '.join(ENCODER_KINDS)}")
    dev = as_device(device)
    names: list[str] = []
    if torch.is_tensor(images):
        refs = images
    elif isinstance(images, (list, tuple)) and images and all(torch.is_tensor(x) or isinstance(x, os.PathLike)
                                                               for x in images):
        refs = list(images)  # images of any sizes, [3, H, W] or [1, 3, H, W] each, or files (the node's IMAGE + folder)
    else:
        try:
            refs = image_paths(split_paths(images), recursive=bool(recursive))  # read micro_batch at a time
        except ImageFileError as e:
            raise RewardError(f"reference: {e}") from None
        names = [str(f) for f in refs]
    enc = load_image_encoder(encoder, path, model, dtype=dtype, device=dev, reward="reference")
    captions = split_list(content_captions)
    text_enc = None
    needs_text = bool(captions and content_weight) or bool(prompt_weight)
    if needs_text and (text_path or not enc.has_text):
        text_enc = load_image_encoder("auto" if text_path else "clip", text_path, dtype=dtype, device=dev,
                                      reward="reference (content guard)")
    return ReferenceStyle(enc, refs, aggregation=aggregation, top_k=top_k, scale=scale, text_encoder=text_enc,
                          content_captions=captions, content_weight=content_weight, prompt_weight=prompt_weight,
                          micro_batch=micro_batch, device=dev, reference_names=names)
