"""One restore of a resumed run for both front ends (`fdfo_core.run.resume`, issue 24 item 5):
`fdfo train --resume` and the ComfyUI Trainer node open the run, fill in what the user left out,
and continue it through the same functions, so a refused change and an allowed one read the same
in both (only the front end's own hints differ)."""

import json
import logging

import pytest
import torch

from comfy_scripts.nodepack import submodule
from fdfo_core.cli.main import main
from fdfo_core.config import FDFOConfig
from fdfo_core.run import resume as cli_resume
from fdfo_core.run import trainer as cli_trainer
from fdfo_core.run.definition import FrontEnd, RunDefinition, refusal_message
from fdfo_core.run.hooks import RunChangeRefused

from fake_comfy import install as install_fake_comfy

SMALL = ["--preset", "toy", "--pairs-per-epoch", "4", "--num-steps", "4", "--lora-rank", "4", "--sample-batch-size", "2",
         "--checkpoint-every", "1", "--no-progress", "--preview-every", "0", "--threads", "1"]


# --- the shared functions themselves -------------------------------------------------------------------


def definition(**config) -> RunDefinition:
    return RunDefinition(prompts=["a red circle"], reward="brightness", config=FDFOConfig(**config).to_dict())


def test_check_changes_refuses_allows_and_lets_resumable_settings_through(tmp_path):
    front = FrontEnd(restore_hint="RESTORE", new_run_hint="NEW", allow_change_hint="ALLOW")
    record = tmp_path / "run.json"
    args = ("checkpoint c.pt", front, False, record, 3, tmp_path / "c.pt")
    assert cli_resume.check_changes(definition(seed=5), definition(seed=5), *args) is None
    assert cli_resume.check_changes(definition(seed=5, epochs=9), definition(seed=5, epochs=20), *args) is None
    with pytest.raises(RunChangeRefused) as e:
        cli_resume.check_changes(definition(seed=5), definition(seed=6), *args)
    assert str(e.value) == refusal_message("checkpoint c.pt", e.value.diffs, front, record)
    assert "  - seed" in str(e.value) and "RESTORE; or NEW; or ALLOW" in str(e.value)
    allowed = cli_resume.check_changes(definition(seed=5), definition(seed=6), "checkpoint c.pt", front, True, record, 3,
                                       tmp_path / "c.pt")
    assert allowed.branch == {"epoch": 3, "checkpoint": str(tmp_path / "c.pt"),
                              "changes": [{"field": "config", "key": "seed", "run": 5, "now": 6}]}
    assert allowed.note.startswith(f"continuing checkpoint c.pt with changes, recorded as a new branch of the run in {record}")


def test_what_the_user_omits_comes_from_the_run(tmp_path):
    recorded = RunDefinition(prompts=["p"], reward="pickscore", reward_options={"pickscore": {"path": "/w", "dtype": "auto"}},
                             reward_normalization={"mode": "per_prompt"}, preview_prompts=[], eval_prompts=["held"],
                             config={**FDFOConfig().to_dict(), "judge": "hpsv2"}, judge_options={"hpsv2": {"path": "/h"}})
    resumed = cli_resume.ResumedRun(source=tmp_path, recorded=recorded)
    # The same reward: omitted options keep the run's; a new one starts from none.
    assert cli_resume.restore_reward(resumed, None, {"pickscore": {"dtype": "float32"}}, None) == (
        "pickscore", {"pickscore": {"path": "/w", "dtype": "float32"}}, "per_prompt", {})
    assert cli_resume.restore_reward(resumed, "brightness", {}, "none") == ("brightness", {}, None, {})
    assert cli_resume.restore_reward(None, None, {}, None) == ("toy_alignment", {}, None, {})
    assert cli_resume.restore_judge_options(resumed, "hpsv2", {"hpsv2": {"version": "2.0"}}) == {
        "hpsv2": {"path": "/h", "version": "2.0"}}
    assert cli_resume.restore_judge_options(resumed, "pickscore", {}) == {}
    # Prompt lists: what is given wins; else the run's own (an empty list included); else None.
    assert resumed.prompts("eval_prompts", None) == ["held"] and resumed.prompts("eval_prompts", ["x"]) == ["x"]
    assert resumed.prompts("preview_prompts", None) == []
    assert cli_resume.ResumedRun(source=tmp_path, recorded=RunDefinition()).prompts("eval_prompts", None) is None
    assert resumed.definition({"prompts": ["q"]}).prompts == ["q"] and resumed.definition({}).reward == "pickscore"
    assert cli_resume.open_resumed_run(tmp_path) is None  # nothing recorded there
    with pytest.raises(FileNotFoundError, match="no checkpoint-"):
        cli_resume.read_resume_point(tmp_path)


# --- both front ends go through them -------------------------------------------------------------------


@pytest.fixture
def comfy(monkeypatch, tmp_path, one_thread):
    return install_fake_comfy(monkeypatch, tmp_path / "comfy")


@pytest.fixture
def calls(monkeypatch):
    """Record each front end's calls of the shared restore (the node pack imports fdfo_core as its own
    package: both copies, which run the same source file, are watched)."""
    seen = []
    for resume_mod, trainer_mod in ((cli_resume, cli_trainer),
                                    (submodule("fdfo_core.run.resume"), submodule("fdfo_core.run.trainer"))):
        assert resume_mod.__file__ == cli_resume.__file__

        def wrap(name, fn, where):
            def spy(*args, **kwargs):
                seen.append(name)
                return fn(*args, **kwargs)
            monkeypatch.setattr(where, name, spy)

        wrap("open_resumed_run", resume_mod.open_resumed_run, resume_mod)
        wrap("continue_run", resume_mod.continue_run, resume_mod)
        wrap("check_changes", trainer_mod.check_changes, trainer_mod)
    return seen


def cli_run(tiny_sd3_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\n")
    run = tmp_path / "cli_run"
    before = torch.get_num_threads()
    try:
        assert main(["train", "--model", str(tiny_sd3_dir), "--prompts", str(prompts), "--reward", "brightness",
                     "--seed", "5", "--epochs", "1", "--run-dir", str(run), *SMALL]) == 0
    finally:
        torch.set_num_threads(before)
    return run


def test_both_front_ends_resume_through_the_shared_restore_with_the_same_messages(
        comfy, calls, tiny_sd3_dir, tmp_path, capsys, caplog):
    before = torch.get_num_threads()
    try:
        # A change of seed, refused: the CLI (a run folder) and the node (lora_name "art").
        run = cli_run(tiny_sd3_dir, tmp_path)
        calls.clear()
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--seed", "6", "--epochs", "2", "--no-progress"]) == 2
        cli_calls = list(calls)
        err = capsys.readouterr().err  # (the model's loading warnings come first)
        cli_msg = err[err.index("fdfo train: error: ") + len("fdfo train: error: "):].rstrip("\n")
        comfy.train(epochs=1, seed=5)
        calls.clear()
        node_refused = submodule("fdfo_core.run.hooks").RunChangeRefused
        with pytest.raises(node_refused) as e:
            comfy.train(epochs=2, seed=6)
        node_calls, node_msg = list(calls), str(e.value)
        assert cli_calls == node_calls == ["open_resumed_run", "continue_run", "check_changes"]
        cli_lines, node_lines = cli_msg.splitlines(), node_msg.splitlines()
        assert cli_lines[0].replace(str(run), "RUN") == node_lines[0].replace(str(comfy.run_dir()), "RUN") == (
            "checkpoint RUN/checkpoints/checkpoint-00001.pt belongs to a run defined differently; continuing it like "
            "this would mix two runs:")
        assert cli_lines[1:-1] == node_lines[1:-1] and len(cli_lines) == 3 and "  - seed" in cli_lines[1]
        assert cli_lines[-1].startswith("To proceed: leave those options out") and "--allow-change" in cli_lines[-1]
        assert node_lines[-1].startswith("To proceed: set those inputs back") and "allow_run_changes" in node_lines[-1]
        assert cli_lines[-1].endswith(f"recorded as a new branch in {run / 'run.json'}.")
        assert node_lines[-1].endswith(f"recorded as a new branch in {comfy.run_dir() / 'run.json'}.")

        # The same change allowed: the same branch recorded, the same note.
        calls.clear()
        assert main(["train", "--resume", str(run), "--seed", "6", "--epochs", "2", "--no-progress",
                     "--allow-change"]) == 0
        cli_note = next(line for line in capsys.readouterr().out.splitlines() if "recorded as a new branch" in line)
        with caplog.at_level(logging.INFO, logger="fdfo"):
            comfy.train(epochs=2, seed=6, allow_run_changes=True)
        node_note = next(r.getMessage() for r in caplog.records if "recorded as a new branch" in r.getMessage())
        assert calls == ["open_resumed_run", "continue_run", "check_changes"] * 2
        cli_branch = json.loads((run / "run.json").read_text())["branches"]
        node_branch = json.loads((comfy.run_dir() / "run.json").read_text())["branches"]
        assert [b["changes"] for b in cli_branch] == [b["changes"] for b in node_branch] == [
            [{"field": "config", "key": "seed", "run": 5, "now": 6}]]
        assert cli_note.split(".json: ", 1)[1] == node_note.split(".json: ", 1)[1] == "seed: 5 in the run, 6 now"
    finally:
        torch.set_num_threads(before)
