"""The FDFO pair update's LoRA after two epochs on the tiny SD3 pipeline, as a file: what
`tests/test_branches.py` pins `branches = 2` against, bit for bit.

The file was written by the code before groups of branches existed (commit 460bf5a, one thread,
CPU fp32): `python tests/branches_reference.py` with that code on the path. Rewrite it only when the
pair update changes on purpose.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parent / "data" / "fdfo_pairs_lora.safetensors"
#: torch and CPU the reference was written with: on another, float rounding may differ in the last bit.
WRITTEN_WITH = {"torch": "2.13.0+cpu", "cpu_capability": "AVX2"}  # also in the file's metadata


def pair_run_lora(tmp: Path, **over) -> dict[str, torch.Tensor]:
    """The adapter state after 2 epochs (3 pairs x 2 branches, 3 steps, churn 0.05, 2 optimizer steps)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_pipelines import tiny_sd3_pipeline

    from fdfo_core.backends.diffusers_backend import DiffusersBackend
    from fdfo_core.config import load_config
    from fdfo_core.methods import FDFOTrainer
    from fdfo_core.rewards import build_reward
    from fdfo_core.run.hooks import Callbacks

    values = dict(epochs=2, pairs_per_epoch=3, num_steps=3, sample_batch_size=2, train_batch_size=4, lora_rank=2,
                  lora_alpha=4.0, checkpoint_every=0, lr=1e-2, optimizer_steps_per_epoch=2, eval_every=0,
                  churn_strength=0.05)
    values.update(over)
    cfg = load_config("toy", overrides=values)
    torch.manual_seed(1234)  # the LoRA's Gaussian init
    be = DiffusersBackend(tiny_sd3_pipeline(tmp), cfg, max_sequence_length=8)
    # The reference predates the CPU backend's channels-last VAE (use_channels_last): decoding in the
    # layout it was written with keeps the pair update comparable to the last bit.
    be.pipe.vae.to(memory_format=torch.contiguous_format)
    FDFOTrainer(be, build_reward("brightness"), ["a red circle", "two blue squares"], cfg,
                callbacks=Callbacks(log=None)).train()
    return {k: v.detach().clone().contiguous() for k, v in be.adapter_state_dict().items()}


if __name__ == "__main__":
    import tempfile

    from safetensors.torch import save_file

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        state = pair_run_lora(Path(tmp))
    save_file(state, str(REFERENCE), metadata={"torch": torch.__version__,
                                               "cpu_capability": torch.backends.cpu.get_cpu_capability()})
    print(f"wrote {REFERENCE} ({len(state)} tensors)")
