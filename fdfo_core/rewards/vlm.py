"""VLM yes/no reward: ask an image-text-to-text model a question about each image and read the
answer's logits.

    reward = scale * sigmoid(logit(target) - logit(contrast))        (scale = 100 by default)

where the logits are the next-token logits right after the chat template's generation prompt
(for Qwen2.5-VL: ``...<|im_end|>\\n<|im_start|>assistant\\n``), i.e. the distribution of the first
answer token. With target "Yes" and contrast "No" this is 100 * P(Yes) / (P(Yes) + P(No)).

The question is typed by the user with a ``{prompt}`` slot (replaced by the image's prompt; other
braces are left alone) or named by a preset of the FDFO paper (`QUESTION_PRESETS`). Images are
resized to ``image_size`` x ``image_size`` (504 in the paper; bilinear with antialiasing) and
rounded to 8 bits before the model's own processor, as any saved image would be.

Answer tokens: the word is encoded without special tokens and used when it is one token, and so
is its variant with a leading space (" Yes", the form after a space in byte-level BPE vocabularies);
which of the two is tried first depends on how the generation prompt ends: after whitespace
("<|im_start|>assistant\\n" in Qwen templates) the model writes the bare word, right after a word
("Assistant:" in SmolVLM / Idefics3) it writes " Yes". Failing both, the word is looked up in the
vocabulary; anything else is an error: pick a word that is a single token. A word typed with its
own leading space (target=" Yes") is taken as it is.

Works with any transformers model loadable by AutoModelForImageTextToText whose processor has a
chat template: Qwen2-VL, Qwen2.5-VL (the paper's Qwen/Qwen2.5-VL-7B-Instruct and 3B), Qwen3-VL,
SmolVLM, Idefics3, LLaVA and similar.

Batches are never padded: a micro-batch is split into groups whose tokenised question has the
same length (images all share one size, so the image tokens match too), so a score does not depend
on the other images in the batch, whatever the model's handling of padding and positions.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..files.text_files import read_json_file, read_text_file
from .base import RewardError
from .clip_common import ModelReward
from .registry import register_reward
from .weights import WeightSource, dtype_kwargs, has_transformers_model, locate, resolve_dtype

DEFAULT_QUESTION = 'Does this image match the caption "{prompt}"? Answer Yes or No.'
QUESTION_PRESETS = {
    "caption_matching": DEFAULT_QUESTION,
    "professional_quality": "Is this image of professional quality? Answer with Yes or No.",
    "photorealism": "Does this image look photorealistic? Answer Yes or No.",
}
DEFAULT_VLM = "Qwen/Qwen2.5-VL-7B-Instruct"


def answer_token_id(tokenizer, word: str, after_space: bool = True) -> int:
    """The id of the single token the model emits for `word` as the first answer token.

    `after_space`: the generation prompt ends in whitespace ("assistant\n"), so the bare word is
    tried first; otherwise ("Assistant:") the variant with a leading space is tried first.
    """
    if not word:
        raise RewardError("vlm: the target and contrast words must not be empty")
    for candidate in ((word, " " + word) if after_space else (" " + word, word)):
        ids = tokenizer.encode(candidate, add_special_tokens=False)
        if len(ids) == 1:
            return int(ids[0])
    vocab = tokenizer.get_vocab()
    if word in vocab:
        return int(vocab[word])
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(word, add_special_tokens=False))
    raise RewardError(
        f"vlm: the answer word {word!r} is several tokens {pieces} for this tokenizer; choose a word that is one token"
    )


def read_question_file(path: str | Path) -> str:
    """The question template in a text file (fdfo_core.files.text_files rules: UTF-8 with or without a
    byte-order mark, any line ends), without surrounding whitespace. Raises RewardError."""
    try:
        question = read_text_file(path, "VLM question file").strip()
    except ValueError as e:
        raise RewardError(f"vlm: {e}") from None
    if not question:
        raise RewardError(f"vlm: the question file {path} is empty; write a yes/no question (use {{prompt}} for the prompt)")
    return question


def _read_chat_template(folder: Path, tokenizer) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return read_text_file(folder / "chat_template.jinja", "chat template")
    for name in ("chat_template.json", "processor_config.json"):
        f = folder / name
        if f.is_file():
            value = read_json_file(f, "processor file").get("chat_template")
            if value:
                return value
    return getattr(tokenizer, "chat_template", None)


def _processor_without_video(folder: Path, error: Exception):
    """The model's own processor class, built without its video processor.

    transformers' video processors need torchvision, which is not always installed (PyPI builds
    of torchvision do not match every torch build). Image inputs never touch the video processor,
    so the processor is built from its image processor and tokenizer alone.
    """
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    cls = None
    for name in ("processor_config.json", "preprocessor_config.json"):
        f = folder / name
        if f.is_file():
            cls_name = read_json_file(f, "processor file").get("processor_class")
            if cls_name and hasattr(transformers, cls_name):
                cls = getattr(transformers, cls_name)
                break
    if cls is None:
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        cls = PROCESSOR_MAPPING[type(config)]
    attributes = cls.get_attributes()
    if not any("video" in a for a in attributes):
        raise error

    class _ImageOnly(cls):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None and "video" in argument_name:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    _ImageOnly.__name__ = _ImageOnly.__qualname__ = cls.__name__
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image_processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    kwargs = {a: None for a in attributes}
    kwargs["tokenizer"] = tokenizer
    kwargs["image_processor"] = image_processor
    params = inspect.signature(cls.__init__).parameters
    if (folder / "processor_config.json").is_file():
        extra = read_json_file(folder / "processor_config.json", "processor file")
        kwargs.update({k: v for k, v in extra.items() if k in params and k not in kwargs and k != "chat_template"})
    return _ImageOnly(**kwargs, chat_template=_read_chat_template(folder, tokenizer))


def load_processor(folder: Path):
    from transformers import AutoProcessor

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    except ImportError as e:
        if "torchvision" not in str(e).lower():
            raise
        return _processor_without_video(folder, e)


class VLMYesNo(ModelReward):
    name = "vlm"

    def __init__(self, model, processor, question: str, target: str = "Yes", contrast: str = "No",
                 image_size: int | None = 504, scale: float = 100.0, micro_batch: int = 4, device=None,
                 dtype: torch.dtype = torch.float32):
        super().__init__(micro_batch=micro_batch, device=device, dtype=dtype)
        self.model = self.freeze(model)
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.question = QUESTION_PRESETS.get(question, question)
        self.image_size = int(image_size) if image_size else None
        self.scale = float(scale)
        template = getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise RewardError("vlm: the processor has no chat template; use an instruction-tuned (chat) VLM")
        # Does the answer start after whitespace ("assistant\n") or right after a word ("Assistant:")?
        after_space = self.texts(["x"])[0][-1:].isspace()
        self.target, self.contrast = target, contrast
        self.target_id = answer_token_id(self.tokenizer, target, after_space)
        self.contrast_id = answer_token_id(self.tokenizer, contrast, after_space)
        if self.target_id == self.contrast_id:
            raise RewardError(f"vlm: {target!r} and {contrast!r} map to the same token")
        params = inspect.signature(self.model.forward).parameters
        self._keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self._nested_images = type(processor).__name__.startswith(("Idefics", "SmolVLM"))
        self.to(self.device)

    def torch_modules(self):
        return [self.model]

    def describe(self) -> str:
        return f"vlm({self.question!r}, {self.target}/{self.contrast})"

    def texts(self, prompts: Sequence[str]) -> list[str]:
        """The full model input text (chat template + generation prompt) for each prompt."""
        out = []
        for p in prompts:
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": self.question.replace("{prompt}", p)}]}]
            out.append(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        return out

    def pil_images(self, images: torch.Tensor) -> list:
        from PIL import Image

        x = images.float()
        if self.image_size and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        arr = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]

    def _forward(self, texts: list[str], images: list) -> torch.Tensor:
        imgs = [[im] for im in images] if self._nested_images else images
        inputs = self.processor(text=texts, images=imgs, padding=True, return_tensors="pt")
        batch = {}
        for k, v in inputs.items():
            if torch.is_tensor(v):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(self.dtype)
            batch[k] = v
        kwargs = {"use_cache": False}
        if self._keep:
            kwargs[self._keep] = 1
        logits = self.model(**batch, **kwargs).logits[:, -1].float()
        return self.scale * torch.sigmoid(logits[:, self.target_id] - logits[:, self.contrast_id])

    def _score(self, images, prompts):
        texts = self.texts(prompts)
        pil = self.pil_images(images)
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        scores = torch.empty(len(texts), dtype=torch.float32, device=self.device)
        for length in dict.fromkeys(lengths):
            idx = [i for i, n in enumerate(lengths) if n == length]
            scores[idx] = self._forward([texts[i] for i in idx], [pil[i] for i in idx])
        return scores


@register_reward("vlm", "VLM yes/no: 100 * sigmoid(logit(Yes) - logit(No)) for a question about each image")
def _vlm(path: str | None = None, model: str = DEFAULT_VLM, question: str = DEFAULT_QUESTION, target: str = "Yes",
         contrast: str = "No", image_size: int | None = 504, scale: float = 100.0, dtype: str = "auto",
         micro_batch: int = 4, device=None, question_file: str | None = None) -> VLMYesNo:
    """path: a transformers VLM folder; model: the Hugging Face id looked up in the offline cache;
    question_file: a UTF-8 text file holding the question (replaces `question`; for long templates)."""
    if question_file:
        question = read_question_file(question_file)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dt = resolve_dtype(dtype, dev, gpu_default=torch.bfloat16)
    source = WeightSource(
        what=f"a chat vision-language model (default {model})", folder="vlm", repo=model,
        files="config.json, model*.safetensors, tokenizer files, preprocessor_config.json, chat template",
        check=has_transformers_model, alt_folders=(model.split("/")[-1],),
    )
    folder = locate(source, path, reward="vlm")
    try:
        from transformers import AutoModelForImageTextToText
    except ImportError:  # transformers < 4.46
        from transformers import AutoModelForVision2Seq as AutoModelForImageTextToText

    try:
        processor = load_processor(folder)
    except Exception as e:
        raise RewardError(f"vlm: could not load the processor from {folder}: {e}") from e
    placement = {"device_map": str(dev)} if dev.type == "cuda" else {}  # load straight onto the GPU
    try:
        net = AutoModelForImageTextToText.from_pretrained(str(folder), local_files_only=True, **dtype_kwargs(dt),
                                                          **placement)
    except Exception as e:
        raise RewardError(f"vlm: could not load an image-text-to-text model from {folder}: {e}") from e
    net = net.to(dt)
    return VLMYesNo(net, processor, question=question, target=target, contrast=contrast, image_size=image_size,
                    scale=scale, micro_batch=micro_batch, device=dev, dtype=dt)
