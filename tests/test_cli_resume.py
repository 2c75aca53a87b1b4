"""`fdfo train --resume R` alone continues the same run, bit for bit, after kill -9 at any point;
a change to what defines the run is refused by name; every file the CLI writes fails with one
plain message when its disk is full or read-only (issues 17 and 18)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fdfo_core.cli.main import main

from storage_faults import EACCES, ENOSPC, EROFS, leftovers

SMALL = ["--preset", "toy", "--pairs-per-epoch", "4", "--num-steps", "4", "--lora-rank", "4", "--sample-batch-size", "2",
         "--checkpoint-every", "1", "--no-progress", "--preview-count", "2"]


@pytest.fixture
def prompts_file(tmp_path):
    p = tmp_path / "three_prompts.txt"
    p.write_text("a red circle\ntwo blue squares\na green triangle\n")
    return p


@pytest.fixture
def threads_kept():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def metrics_of(run):
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        out.append({k: v for k, v in m.items() if not k.startswith("time_")})
    return out


def cli_start(*args, kill_at=None):
    """`fdfo` in a new process, started (stdout and stderr piped); `cli` waits for it."""
    env = dict(os.environ)
    env.pop("FDFO_TEST_KILL_AT", None)
    if kill_at:
        env["FDFO_TEST_KILL_AT"] = kill_at
    code = "import sys; from fdfo_core.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=600):
    """The CompletedProcess of a `cli_start` process (killed if it outlives `timeout`)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def cli(*args, kill_at=None, timeout=600):
    return finish(cli_start(*args, kill_at=kill_at), timeout)


def test_kill_9_anywhere_then_resume_alone_ends_bit_for_bit_equal(tiny_sd3_dir, prompts_file, tmp_path, threads_kept):
    """One run killed four times (training before any checkpoint, sampling, a checkpoint half
    written), each time continued with `fdfo train --resume R` alone: the same LoRA, metrics and
    last checkpoint as the uninterrupted run, with the run's 3 prompts, reward, options and
    per-prompt normalisation restored, and no temporary file left."""
    command = ["train", "--model", tiny_sd3_dir, "--prompts", prompts_file,
               "--reward", "brightness + 0.01*jpeg_compressibility", "--reward-opt", "jpeg_compressibility.quality=80",
               "--reward-normalize", "per_prompt", "--seed", "5", "--epochs", "4", "--threads", "1", *SMALL]
    ref, run = tmp_path / "ref", tmp_path / "run"
    # The first killed process runs while the uninterrupted reference trains in this one (two cores).
    started = cli_start(*command, "--run-dir", run, kill_at="train@1")
    try:
        assert main([*map(str, command), "--run-dir", str(ref)]) == 0
    finally:
        first = finish(started)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert (run / "run.json").exists() and not (run / "checkpoints").exists()
    for kill_at, last in (("sample@2", "checkpoint-00001.pt"), ("write:checkpoint-00003.pt", "checkpoint-00002.pt")):
        p = cli("train", "--resume", run, kill_at=kill_at)
        assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
        assert sorted(x.name for x in (run / "checkpoints").glob("*.pt"))[-1] == last
    assert leftovers(run)  # the checkpoint killed mid-write left its temporary file ...
    done = cli("train", "--resume", run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert leftovers(run) == []  # ... which the resume removed
    (line,) = [l for l in done.stdout.splitlines() if l.startswith("run folder:")]
    assert "(3 prompts, reward per_prompt(" in line and "jpeg" in line, line

    a, b = load_file(ref / "lora.safetensors"), load_file(run / "lora.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics_of(run) == metrics_of(ref)
    ca = torch.load(ref / "checkpoints" / "checkpoint-00004.pt", weights_only=True)
    cb = torch.load(run / "checkpoints" / "checkpoint-00004.pt", weights_only=True)
    assert all(torch.equal(ca["adapter"][k], cb["adapter"][k]) for k in ca["adapter"])
    record = json.loads((run / "run.json").read_text())
    assert len(record["sessions"]) == 4 and record["branches"] == []
    assert record["definition"] == json.loads((ref / "run.json").read_text())["definition"] | {
        "model_source": record["definition"]["model_source"]}


@pytest.fixture(scope="module")
def finished(tiny_sd3_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    prompts = tmp / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green triangle\n")
    run = tmp / "run"
    before = torch.get_num_threads()
    try:
        assert main(["train", "--model", str(tiny_sd3_dir), "--prompts", str(prompts), "--reward", "jpeg_compressibility",
                     "--seed", "5", "--epochs", "1", "--threads", "1", "--preview-every", "0", "--run-dir", str(run),
                     *SMALL]) == 0
    finally:
        torch.set_num_threads(before)
    return run, prompts


CLI_CHANGES = {
    "training prompts": lambda tmp, other: ["--prompts", tmp / "other.txt"],
    "reward": lambda tmp, other: ["--reward", "brightness"],
    "reward options": lambda tmp, other: ["--reward-opt", "jpeg_compressibility.quality=50"],
    "reward normalisation": lambda tmp, other: ["--reward-normalize", "per_prompt"],
    "seed": lambda tmp, other: ["--seed", "6"],
    "model": lambda tmp, other: ["--model", other],
    "lr": lambda tmp, other: ["--lr", "0.5"],
}


@pytest.mark.parametrize("name", sorted(CLI_CHANGES))
def test_resume_refuses_each_change_by_name(finished, other_tiny_sd3_dir, tmp_path, capsys, name, threads_kept):
    run, _ = finished
    (tmp_path / "other.txt").write_text("a red circle\na yellow star\n")
    args = [str(a) for a in CLI_CHANGES[name](tmp_path, other_tiny_sd3_dir)]
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress", *args]) == 2
    err = _err(capsys)
    assert err.startswith("fdfo train: error: checkpoint ") and f"\n  - {name}" in err, err
    assert "--allow-change" in err and "leave out --resume, or give another --run-dir" in err
    assert "leave those options out (what you omit is restored from the run)" in err
    assert json.loads((run / "run.json").read_text())["branches"] == []


def test_allow_change_records_a_branch_then_resume_alone_follows_it(finished, tmp_path, capsys, threads_kept):
    src, _ = finished
    run = tmp_path / "run"
    import shutil

    shutil.copytree(src, run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--seed", "6", "--allow-change"]) == 0
    record = json.loads((run / "run.json").read_text())
    (branch,) = record["branches"]
    assert branch["epoch"] == 1 and branch["changes"] == [{"field": "config", "key": "seed", "run": 5, "now": 6}]
    assert "recorded as a new branch of the run" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0  # the branch is the run now
    assert [m["epoch"] for m in metrics_of(run)] == [1, 2, 3]
    assert json.loads((run / "run.json").read_text())["definition"]["config"]["seed"] == 6


def test_a_new_run_in_a_run_folder_is_refused(finished, capsys, tiny_sd3_dir):
    run, prompts = finished
    assert main(["train", "--model", str(tiny_sd3_dir), "--prompts", str(prompts), "--run-dir", str(run), *SMALL]) == 2
    assert "already holds a run" in capsys.readouterr().err


# --- storage faults in the CLI --------------------------------------------------------------------


def _err(capsys):
    """The CLI's error message (from its "fdfo <command>: error:" line on): one message, no traceback."""
    import re

    err = capsys.readouterr().err
    m = re.search(r"fdfo [\w-]+: error: ", err)
    assert m, err
    err = err[m.start():]
    assert "Traceback" not in err, err
    return err


def test_train_into_a_read_only_folder_fails_before_any_work(tiny_sd3_dir, prompts_file, tmp_path, capsys, disk_faults):
    disk_faults.read_only(str(tmp_path / "ro") + "*")
    args = ["train", "--model", str(tiny_sd3_dir), "--prompts", str(prompts_file), "--reward", "brightness", *SMALL]
    assert main([*args, "--run-dir", str(tmp_path / "ro" / "run")]) == 2
    err = _err(capsys)
    assert err.startswith("fdfo train: error: could not create the run folder") and "read-only" in err
    (tmp_path / "file").write_text("x")
    assert main([*args, "--run-dir", str(tmp_path / "file")]) == 2
    assert "file is a file, not a folder" in _err(capsys)


@pytest.mark.parametrize("what, rule", [
    ("checkpoint", ("write", "*/checkpoint-00002.pt", ENOSPC, 0)),
    ("preview grid", ("create", "*/samples/epoch-00002.png", EROFS, 0)),
    ("reward curve", ("sync", "*/reward_curve.png", EACCES, 1)),
    ("metrics log", ("append", "*/metrics.jsonl", ENOSPC, 1)),
    ("LoRA file", ("create", "*/run/lora.safetensors", ENOSPC, 0)),
])
def test_train_stops_with_one_message_when_a_write_fails(tiny_sd3_dir, prompts_file, tmp_path, capsys, disk_faults,
                                                         rescue_dirs, what, rule, threads_kept):
    run = tmp_path / "run"
    disk_faults.fail(*rule)
    args = ["train", "--model", str(tiny_sd3_dir), "--prompts", str(prompts_file), "--reward", "brightness",
            "--epochs", "3", "--threads", "1", *SMALL]
    assert main([*args, "--run-dir", str(run)]) == 2
    err = _err(capsys)
    assert err.startswith(f"fdfo train: error: could not write the {what} "), err
    assert f"Last complete checkpoint: {run / 'checkpoints'}" in err
    assert f"To continue once that is fixed: fdfo train --resume {run}." in err
    assert "The LoRA trained so far (epoch" in err
    assert leftovers(tmp_path) == []
    disk_faults.clear()
    assert main(["train", "--resume", str(run)]) == 0
    assert [m["epoch"] for m in metrics_of(run)] == [1, 2, 3] and (run / "lora.safetensors").exists()


def test_sample_and_convert_outputs(tiny_sd3_dir, tmp_path, capsys, disk_faults):
    disk_faults.read_only(str(tmp_path / "ro") + "*")
    assert main(["sample", "--model", str(tiny_sd3_dir), "--prompt", "a red circle", "--num-steps", "2",
                 "--out", str(tmp_path / "ro" / "out")]) == 2
    assert "could not create the output folder" in _err(capsys)
    disk_faults.fail("write", "*/0001.png", ENOSPC)
    out = tmp_path / "out"
    assert main(["sample", "--model", str(tiny_sd3_dir), "--prompt", "a red circle", "--per-prompt", "2",
                 "--num-steps", "2", "--out", str(out)]) == 2
    assert f"could not write the sample image {out / '0001.png'}: no space left on the device" in _err(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["0000.png"]  # the finished one, nothing partial

    from fdfo_core.backends.lora_files import save_lora

    lora = tmp_path / "lora.safetensors"
    save_lora(lora, {}, {"base_model_family": "sd3"})
    (tmp_path / "blocker").write_text("x")
    assert main(["convert-lora", str(lora), str(tmp_path / "blocker" / "peft.safetensors"), "--model",
                 str(tiny_sd3_dir)]) == 2
    assert "blocker is a file, not a folder" in _err(capsys)
    disk_faults.fail("write", "*/peft.safetensors", ENOSPC)
    assert main(["convert-lora", str(lora), str(tmp_path / "peft.safetensors"), "--model", str(tiny_sd3_dir)]) == 2
    assert "could not write the converted LoRA" in _err(capsys)
    assert leftovers(tmp_path) == []


def test_demo_output_folder_is_checked_first(tmp_path, capsys, disk_faults):
    disk_faults.read_only(str(tmp_path / "ro") + "*")
    assert main(["demo", "--out", str(tmp_path / "ro" / "demo")]) == 2
    assert "could not create the demo output folder" in _err(capsys)
