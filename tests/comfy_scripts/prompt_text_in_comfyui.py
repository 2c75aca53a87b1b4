"""Run with ComfyUI's python: what ComfyUI's own text encoders make of a prompt (tests/test_prompt_text.py).

    <comfyui python> tests/comfy_scripts/prompt_text_in_comfyui.py COMFYUI_ROOT TEXTS_JSON

TEXTS_JSON: {"<family>|<any label>": the text the ComfyUI backend gives the CLIP's tokenizer
(`Family.comfy_prompt`)}.
For each chat-template family whose tokenizer ComfyUI ships (Qwen-Image, HunyuanImage 2.1, Z-Image:
Qwen's vocabulary is in comfy/text_encoders/qwen25_tokenizer), the text goes through ComfyUI's
tokenizer class and then through the family's text-encoder wrapper with the language model
replaced by one that returns each token's id as its hidden state: so what comes out are the ids
of the tokens whose hidden states reach the diffusion model (the template ComfyUI adds, minus the
prefix its wrapper drops). No weights are needed. Prints one line `RESULT {json}`:
{key: {"tokenized": [ids], "kept": [ids], "glyph": text fed to byT5 or null}}.
"""

from __future__ import annotations

import json
import sys

comfy_root, texts = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, comfy_root)
sys.argv = [sys.argv[0], "--cpu"]

import torch  # noqa: E402

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True

import importlib  # noqa: E402

from comfy import sd1_clip  # noqa: E402


def ids_as_hidden_states(self, token_weight_pairs):
    """SD1ClipModel.encode_token_weights with the language model replaced: [1, tokens, 1] ids."""
    pairs = token_weight_pairs[self.clip_name][0]
    ids = torch.tensor([[float(p[0]) for p in pairs]])[..., None]
    return ids, None, {"attention_mask": torch.ones(1, ids.shape[1])}


sd1_clip.SD1ClipModel.encode_token_weights = ids_as_hidden_states

ENCODERS = {  # family: (ComfyUI module, tokenizer class, text-encoder wrapper class, its language model's key)
    "qwen_image": ("qwen_image", "QwenImageTokenizer", "QwenImageTEModel", "qwen25_7b"),
    "hunyuan_image": ("hunyuan_image", "HunyuanImageTokenizer", "HunyuanImageTEModel", "qwen25_7b"),
    "z_image": ("z_image", "ZImageTokenizer", "ZImageTEModel", "qwen3_4b"),
}

result = {}
for label, text in texts.items():
    module_name, tokenizer_name, model_name, key = ENCODERS[label.split("|")[0]]
    try:  # an older ComfyUI lacks the family
        module = importlib.import_module(f"comfy.text_encoders.{module_name}")
    except ImportError as e:
        result[label] = {"missing": str(e)}
        continue
    tokenizer_class, model_class = getattr(module, tokenizer_name), getattr(module, model_name)
    tokenizer = tokenizer_class()
    tokens = tokenizer.tokenize_with_weights(text)
    model = model_class.__new__(model_class)  # its wrapper's logic only: no language model is built
    torch.nn.Module.__init__(model)
    model.clip_name = key
    model.byt5_small = None
    kept, _, _ = model.encode_token_weights(tokens)
    glyph = None
    if "byt5" in tokens:
        glyph = tokenizer.byt5.tokenizer.decode([p[0] for p in tokens["byt5"][0] if p[0] not in (0, 1)])
    result[label] = {"tokenized": [int(p[0]) for p in tokens[key][0]], "kept": kept[0, :, 0].long().tolist(),
                      "glyph": glyph}
print("RESULT " + json.dumps(result))
