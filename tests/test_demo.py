"""A shortened `fdfo demo` on the bundled toy model: every output is written and sensible."""

import json

import pytest
from PIL import Image

from fdfo_core.cli.main import main
from fdfo_core.backends.lora_files import load_lora


@pytest.mark.slow
def test_short_demo_writes_grid_curve_lora_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--epochs", "2", "--pairs-per-epoch", "8", "--heldout-prompts", "4",
               "--seeds-per-prompt", "2", "--eval-every", "1"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["heldout_pairs"] == 8
    for key in ("alignment_before", "alignment_after"):
        mean, se = summary[key]
        assert 0 <= mean <= 1 and se >= 0
    assert 0 <= summary["diversity_before"] <= 1
    assert [c[0] for c in summary["curve"]] == [0, 1, 2]
    grid = Image.open(out / "before_after.png")
    assert grid.width > 2 * grid.height * 0.9  # two grids side by side
    assert Image.open(out / "reward_curve.png").size == (640, 400)
    assert (out / "lora-best.safetensors").exists()  # the trainer's guardrails, on the demo's held-out captions
    tensors, meta = load_lora(out / "lora.safetensors")
    assert meta["base_model_family"] == "sd3" and meta["reward"] == "toy_alignment" and meta["epochs"] == 2
    assert any(k.endswith(".alpha") for k in tensors)
    printed = capsys.readouterr().out
    assert main(["demo", "--out", str(tmp_path / "x"), "--seeds-per-prompt", "1"]) == 2
    assert "held-out alignment before" in printed and "held-out alignment after" in printed


@pytest.mark.slow
def test_demo_output_that_cannot_be_written_says_what_is_kept(tmp_path, capsys, disk_faults):
    from storage_faults import ENOSPC, leftovers

    out = tmp_path / "demo"
    disk_faults.fail("write", "*/summary.json", ENOSPC)
    assert main(["demo", "--out", str(out), "--epochs", "1", "--pairs-per-epoch", "4", "--heldout-prompts", "2",
                 "--seeds-per-prompt", "2", "--eval-every", "0"]) == 2
    err = capsys.readouterr().err
    err = err[err.index("fdfo demo: error: "):]  # (library logging before it is not ours)
    assert err.startswith(f"fdfo demo: error: could not write the demo summary {out / 'summary.json'}: no space left")
    assert f"Training itself finished: the LoRA is {out / 'lora.safetensors'}" in err and "Traceback" not in err
    assert (out / "lora.safetensors").exists() and (out / "before_after.png").exists()
    assert not (out / "summary.json").exists() and leftovers(out) == []
    # The demo's run folder is a regular run: a second demo into it is refused, not mixed in.
    assert main(["demo", "--out", str(out), "--epochs", "1", "--pairs-per-epoch", "4"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_demo_fixes_its_thread_count_and_passes_its_settings(tmp_path, monkeypatch):
    """`fdfo demo` runs at DEMO_THREADS whatever the machine (its figures depend on the count), unless
    --threads says otherwise; --own-evaluation and --steps-per-sample reach run_demo."""
    import torch

    from fdfo_core.cli import demo

    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: seen.append((torch.get_num_threads(), kw)))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if demo.DEMO_THREADS != 1 else 3)
        assert main(["demo", "--out", str(tmp_path / "a")]) == 0
        assert main(["demo", "--out", str(tmp_path / "b"), "--threads", "1", "--own-evaluation",
                     "--steps-per-sample", "0", "--eval-every", "5"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen[0][0] == demo.DEMO_THREADS
    assert seen[0][1]["own_evaluation"] is False and seen[0][1]["eval_every"] is None
    assert seen[1][0] == 1
    assert seen[1][1]["own_evaluation"] is True and seen[1][1]["steps_per_sample"] == 0 and seen[1][1]["eval_every"] == 5


@pytest.mark.slow
def test_demo_figures_are_the_runs_own_held_out_evaluation(tmp_path):
    """The demo's before/after figures and curve are the trainer's held-out evaluations (issue 24):
    the same numbers as metrics.jsonl, on every held-out caption x seed."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "2", "--pairs-per-epoch", "4", "--heldout-prompts", "3",
                 "--eval-every", "0", "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["evaluation"] == "the run's" and summary["steps_per_sample"] == 10 and summary["heldout_pairs"] == 6
    assert summary["alignment_after"] == [metrics[-1]["heldout_reward"], metrics[-1]["heldout_reward_se"]]
    assert summary["alignment_before"][0] == metrics[-1]["heldout_reward_base"]
    assert [c[0] for c in summary["curve"]] == [0, 2]  # --eval-every 0: the start and the end only
    run = json.loads((out / "run.json").read_text())
    assert len(run["definition"]["eval_prompts"]) == 3
