"""The pretraining script keeps working: a seconds-long smoke run of every stage, twice, identically."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fdfo_core.toy.model import TOY_MAX_SEQUENCE_LENGTH, load_toy_pipeline  # noqa: E402
from fdfo_core.cli.toy_pretrain import main  # noqa: E402


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_smoke_pretraining_is_reproducible(tmp_path):
    threads = torch.get_num_threads()
    try:
        for run in ("a", "b"):
            assert main(["--out", str(tmp_path / run), "--preset", "smoke", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    work = tmp_path / "a.work"
    assert (work / "summary.json").is_file() and (work / "eval_history.json").is_file()
    pipe = load_toy_pipeline(tmp_path / "a")
    out = pipe(["a red circle on a blue background"], num_inference_steps=2, max_sequence_length=TOY_MAX_SEQUENCE_LENGTH, output_type="pt")
    assert out.images.shape == (1, 3, 64, 64)
