"""A run written by the code before the re-layout of issue 24 (commit e65a639, flat modules,
one `FDFOTrainer` holding loop and method) still resumes with today's code: the bundled toy
model, 1 epoch of 2 pairs x 3 steps, LoRA rank 1, checkpoint every epoch (tests/data/e65a639_toy_run,
made with e65a639's `fdfo train --preset toy --prompts P --pairs-per-epoch 2 --num-steps 3
--lora-rank 1 --epochs 1 --checkpoint-every 1 --sample-batch-size 2 --preview-every 0
--eval-every 0 --threads 1`; its LoRA file and reward curve were left out to keep it small)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import fdfo_core.toy
from fdfo_core.cli.main import main
from fdfo_core.run.checkpoints import load_checkpoint
from fdfo_core.run.trainer import RunLoop

OLD_RUN = Path(__file__).parent / "data" / "e65a639_toy_run"


@pytest.fixture
def threads_kept():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_checkpoint_of_the_pre_relayout_code_resumes_and_trains_on(tmp_path, monkeypatch, threads_kept):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    old = load_checkpoint(run / "checkpoints" / "checkpoint-00001.pt")  # weights_only: no pickled module paths
    assert old["format"] == "fdfo-checkpoint-2" and old["epoch"] == 1

    loaded = {}
    resume = RunLoop.resume

    def spy(self, path, allow_change=False):  # what the trainer holds right after loading
        resume(self, path, allow_change=allow_change)
        loaded.update(epoch=self.epoch, images_seen=self.images_seen, history=list(self.history),
                      adapter={k: v.detach().cpu().clone() for k, v in self.backend.adapter_state_dict().items()},
                      optimizer_steps=[s["step"].clone() for s in self.optimizer.state_dict()["state"].values()])

    monkeypatch.setattr(RunLoop, "resume", spy)
    weights = Path(fdfo_core.toy.__file__).parent / "weights"  # the run recorded e65a639's checkout as its source
    assert main(["train", "--resume", str(run), "--model", str(weights), "--epochs", "2", "--no-progress",
                 "--threads", "1"]) == 0

    assert loaded["epoch"] == 1 and loaded["images_seen"] == old["images_seen"]
    assert loaded["history"] == json.loads(old["history"])
    assert loaded["adapter"].keys() == old["adapter"].keys()
    assert all(torch.equal(loaded["adapter"][k], old["adapter"][k]) for k in old["adapter"])
    old_steps = [s["step"] for s in old["optimizer"]["state"].values()]
    assert loaded["optimizer_steps"] and all(torch.equal(a, b) for a, b in zip(loaded["optimizer_steps"], old_steps))

    new = load_checkpoint(run / "checkpoints" / "checkpoint-00002.pt")
    assert new["epoch"] == 2 and new["images_seen"] == 2 * old["images_seen"]
    assert not all(torch.equal(new["adapter"][k], old["adapter"][k]) for k in old["adapter"])  # it trained on
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[0] == json.loads(old["history"])[0]
    record = json.loads((run / "run.json").read_text())
    assert [s["start_epoch"] for s in record["sessions"]] == [0, 1] and record["branches"] == []
