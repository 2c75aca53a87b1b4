"""Train the tiny SD3 pipeline for a few epochs, single-process or under torchrun; rank 0 saves
the adapter to argv[1]. Used by test_distributed.py."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fdfo_core.backends.diffusers_backend import DiffusersBackend  # noqa: E402
from fdfo_core.config import load_config  # noqa: E402
from fdfo_core.run.distributed import init_distributed  # noqa: E402
from fdfo_core.rewards import build_reward  # noqa: E402
from fdfo_core.run.hooks import Callbacks  # noqa: E402
from fdfo_core.methods import FDFOTrainer  # noqa: E402
from tiny_pipelines import tiny_sd3_pipeline  # noqa: E402

torch.set_num_threads(1)
out, tmp = Path(sys.argv[1]), Path(sys.argv[2])
dist = init_distributed()
cfg = load_config("toy", overrides=dict(
    epochs=3, pairs_per_epoch=8, num_steps=4, sample_batch_size=4, train_batch_size=8,
    lora_rank=4, lora_alpha=8.0, checkpoint_every=0, lr=1e-2, churn_strength=0.02))
pipe = tiny_sd3_pipeline(tmp / f"rank{dist.rank}")
torch.manual_seed(1234)
backend = DiffusersBackend(pipe, cfg, max_sequence_length=8)
trainer = FDFOTrainer(backend, build_reward("brightness"), ["a red circle", "two blue squares", "green"], cfg,
                      callbacks=Callbacks(log=None), dist=dist)
trainer.train()
if dist.is_main:
    torch.save({"adapter": backend.adapter_state_dict(), "history": trainer.history}, out)
dist.barrier()
