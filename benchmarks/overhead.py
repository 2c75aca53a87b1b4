"""How much does an FDFO epoch cost beyond the model passes it needs?

Builds a tiny SD3 pipeline (the bundled toy model's architecture: MMDiT depth 3, hidden 192,
64x64 images, random weights), times one full epoch (paired sampling, decode, reward, item
shuffling, training, checkpoint), then times the bare model passes the same epoch needs:
the sampling forwards (no grad), the VAE decodes, and the training forward+backward passes of
the same micro-batch shapes. Prints both and their ratio (goal: <= 1.15).

    python benchmarks/overhead.py [--pairs 32] [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tiny_sd3(depth: int = 3):
    from diffusers import AutoencoderTiny, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    # Whole words as single tokens: a BPE vocabulary with one merge chain per word.
    words = "a red green blue circle square triangle two three above below left right of on background".split()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges = []
    for ch in sorted({c for w in words for c in w}):
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    for w in words:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16, pad_token="<|endoftext|>")
    torch.manual_seed(0)

    def clip():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=16, projection_dim=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()

    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=depth, attention_head_dim=64,
        num_attention_heads=depth, joint_attention_dim=128, caption_projection_dim=64 * depth,
        pooled_projection_dim=128, out_channels=16, pos_embed_max_size=16).eval()
    vae = AutoencoderTiny(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=clip(), tokenizer=tok, text_encoder_2=clip(), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="epochs timed (the fastest counts)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from fdfo_core.backends.diffusers_backend import DiffusersBackend
    from fdfo_core.config import load_config
    from fdfo_core.rewards import build_reward
    from fdfo_core.run.hooks import Callbacks
    from fdfo_core.methods import FDFOTrainer

    cfg = load_config("toy", overrides=dict(pairs_per_epoch=args.pairs, num_steps=args.steps, epochs=1,
                                            checkpoint_every=1, eval_every=0))  # the training epoch alone
    backend = DiffusersBackend(tiny_sd3(), cfg, max_sequence_length=16)
    reward = build_reward("brightness")
    prompts = ["a red circle above a blue square", "two green triangles", "three red squares on a blue background"]
    run = Path(tempfile.mkdtemp())
    trainer = FDFOTrainer(backend, reward, prompts, cfg, run_dir=run, callbacks=Callbacks(log=None))

    # --- full epochs (the first one also warms up) ---
    trainer.train_epoch()
    epoch_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        trainer.train_epoch()
        trainer.save_checkpoint()
        epoch_times.append(time.perf_counter() - t0)
    epoch = min(epoch_times)
    m = trainer.history[-1]

    # --- the bare model passes of one epoch ---
    shape = backend.latent_shape(cfg.height, cfg.width)
    cond_all = backend.encode_prompts(prompts)
    pick = lambda n: {k: v[torch.arange(n) % len(prompts)] for k, v in cond_all.items()}  # noqa: E731
    params = backend.trainable_parameters()

    def sampling():
        with torch.no_grad():
            for start in range(0, cfg.pairs_per_epoch, cfg.sample_batch_size):
                b = 2 * (min(cfg.pairs_per_epoch, start + cfg.sample_batch_size) - start)
                x, cond = torch.randn(b, *shape), pick(b)
                for i in range(cfg.num_steps):
                    backend.velocity(x, torch.full((b,), 0.5), cond)

    def decoding():
        n = 2 * cfg.pairs_per_epoch
        for start in range(0, n, cfg.decode_batch_size):
            backend.decode(torch.randn(min(n, start + cfg.decode_batch_size) - start, *shape))

    def training():
        items = m["items"]
        chunks = [len(c) for c in torch.tensor_split(torch.arange(items), cfg.optimizer_steps_per_epoch)]
        for size in chunks:
            for start in range(0, size, cfg.train_batch_size):
                b = min(size, start + cfg.train_batch_size) - start
                v = backend.velocity(torch.randn(b, *shape), torch.rand(b), pick(b))
                v.pow(2).mean().backward()
            for p in params:
                p.grad = None

    def timed(fn):
        fn()  # warm-up
        best = math.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    t_sample, t_decode, t_train = timed(sampling), timed(decoding), timed(training)
    passes = t_sample + t_decode + t_train
    print(f"tiny SD3 (depth 3, 64x64), {cfg.pairs_per_epoch} pairs x {cfg.num_steps} steps, "
          f"{m['items']} training items, {args.threads} threads")
    print(f"  full epoch (sample + decode + reward + shuffle + train + checkpoint): {epoch:.2f} s")
    print(f"    trainer's own phase timings: sample {m['time_sample']:.2f} s, reward {m['time_reward']:.2f} s, "
          f"train {m['time_train']:.2f} s")
    print(f"  bare model passes: sampling {t_sample:.2f} s + decode {t_decode:.2f} s + train fwd/bwd {t_train:.2f} s "
          f"= {passes:.2f} s")
    print(f"  overhead ratio epoch / model passes = {epoch / passes:.3f} (goal <= 1.15)")


if __name__ == "__main__":
    main()
