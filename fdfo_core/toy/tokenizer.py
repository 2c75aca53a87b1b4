"""A tiny CLIP tokenizer whose BPE merges are learned over the toy caption vocabulary.

transformers' `CLIPTokenizer` needs a `vocab.json` and a `merges.txt`; without merges every word
falls apart into single characters. We learn merges (plain byte-pair encoding: repeatedly join
the most frequent adjacent pair) until every vocabulary word is one symbol, so every caption word
is one token. Any other text still tokenizes, character by character, because the vocabulary
keeps all 256 byte symbols (with and without the end-of-word marker), as CLIP's does.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .grammar import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
#: 14 tokens is the longest caption with BOS and EOS; 16 leaves room for a stray word.
MAX_LENGTH = 16


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2 / CLIP convention):
    printable Latin-1 bytes map to themselves, the others to code points from 256 upwards."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def train_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges that turn every word of `words` into a single symbol.

    Each word counts once; ties between equally frequent pairs go to the alphabetically first
    pair, so the result is deterministic.
    """
    segs = {w: [*w[:-1], w[-1] + END_OF_WORD] for w in sorted(set(words)) if w}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for seg in segs.values():
            pairs.update(zip(seg, seg[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, seg in segs.items():
            out, i = [], 0
            while i < len(seg):
                if i + 1 < len(seg) and (seg[i], seg[i + 1]) == best:
                    out.append(seg[i] + seg[i + 1])
                    i += 2
                else:
                    out.append(seg[i])
                    i += 1
            segs[w] = out


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Special tokens (ids 0 and 1), byte symbols, byte symbols + end-of-word, then merge results."""
    tokens = [BOS, EOS]
    base = _byte_symbols()
    tokens += base + [s + END_OF_WORD for s in base]
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    return {t: i for i, t in enumerate(tokens)}


def write_tokenizer_files(out_dir: str | Path) -> Path:
    """Write `vocab.json` and `merges.txt` for the toy vocabulary into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = train_merges(vocabulary())
    (out / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False, indent=0))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return out


def build_toy_tokenizer(max_length: int = MAX_LENGTH):
    """A `CLIPTokenizer` over the toy vocabulary (pad = EOS, as CLIP-L's), model_max_length `max_length`."""
    from transformers import CLIPTokenizer

    merges = train_merges(vocabulary())
    return CLIPTokenizer(
        vocab=build_vocab(merges),
        merges=merges,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
        model_max_length=max_length,
    )
