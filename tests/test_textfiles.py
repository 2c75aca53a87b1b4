"""Text files from other editors and systems (issue 10, kind 1): every reader strips a byte-order
mark, accepts CRLF and CR line ends, and answers undecodable bytes with a message that names the
file, the position and the fix, never a traceback."""

from __future__ import annotations

import codecs
import json

import pytest

from fdfo_core.cli.main import main
from fdfo_core.errors import ConfigError
from fdfo_core.config import load_config
from fdfo_core.files.prompts import parse_prompt_text, read_prompts
from fdfo_core.files.text_files import (
    TextFileError,
    decode_text,
    read_json_file,
    read_lines,
    read_text_file,
    read_toml_file,
)

BOM = codecs.BOM_UTF8


# --- the shared module ---------------------------------------------------------------------------


def test_bom_is_dropped_and_every_line_end_is_accepted(tmp_path):
    for name, data in {
        "bom_lf": BOM + b"a red square\nb\n",
        "crlf": b"a red square\r\nb\r\n",
        "bom_crlf": BOM + b"a red square\r\nb",
        "cr": b"a red square\rb\r",
    }.items():
        f = tmp_path / f"{name}.txt"
        f.write_bytes(data)
        assert read_text_file(f).split("\n")[:2] == ["a red square", "b"], name
        assert read_lines(f) == ["a red square", "b"], name


def test_utf16_and_utf32_with_their_byte_order_mark_are_read(tmp_path):
    """PowerShell 5's `>` and Notepad's "Unicode" write UTF-16 LE with a BOM: the BOM says how to read it."""
    text = "café au lait\r\nnaïve 🦊\r\n"
    for codec in ("utf-16", "utf-16-be", "utf-32"):
        f = tmp_path / f"{codec}.txt"
        data = text.encode(codec)
        if codec == "utf-16-be":
            data = codecs.BOM_UTF16_BE + data
        f.write_bytes(data)
        assert read_lines(f) == ["café au lait", "naïve 🦊"], codec


def test_latin1_file_error_names_file_position_bytes_and_fix(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_bytes("a cat\n".encode() + "caf".encode() + b"\xe9 au lait\n")
    with pytest.raises(TextFileError) as info:
        read_text_file(f, "prompts file")
    e = info.value
    assert isinstance(e, ValueError)
    msg = str(e)
    assert str(f) in msg and "prompts file" in msg
    assert "\\xe9" in msg and "byte offset 9" in msg and "line 2, column 4" in msg
    assert "Save the file as UTF-8" in msg
    assert "café au lait" in msg  # how the line reads in Windows-1252, so the user recognises it
    assert (e.offset, e.line, e.column, e.bad_bytes) == (9, 2, 4, b"\xe9")


def test_error_column_counts_characters_and_lines_count_every_line_end(tmp_path):
    f = tmp_path / "mixed.txt"
    # line 1 (CRLF), line 2 (CR), line 3 holds multi-byte UTF-8 before the bad byte
    f.write_bytes(b"one\r\ntwo\r" + "naïve ".encode() + b"\x92quote\x92")
    with pytest.raises(TextFileError) as info:
        read_text_file(f)
    assert (info.value.line, info.value.column) == (3, 7)
    assert "line 3, column 7" in str(info.value)


def test_binary_and_truncated_files(tmp_path):
    f = tmp_path / "weights.txt"
    f.write_bytes(b"\x00\x01\xff\xfe\x00garbage")
    with pytest.raises(TextFileError, match="binary file"):
        read_text_file(f)
    g = tmp_path / "cut.txt"
    g.write_bytes("a fox ".encode() + "🦊".encode()[:2])  # a multi-byte character cut short
    with pytest.raises(TextFileError, match="byte offset 6"):
        read_text_file(g)
    with pytest.raises(TextFileError, match="does not exist"):
        read_text_file(tmp_path / "nope.txt")
    with pytest.raises(TextFileError, match="is a folder"):
        read_text_file(tmp_path)


def test_bytes_that_are_not_a_file():
    assert decode_text(BOM + b'{"scores": [1]}\r\n', "the reply") == '{"scores": [1]}\n'
    with pytest.raises(TextFileError, match=r"the reply is not valid UTF-8.*\\xff"):
        decode_text(b"ok \xff", "the reply")


def test_json_and_toml_files(tmp_path):
    j = tmp_path / "a.json"
    j.write_bytes(BOM + b'{"a": [1,\r\n 2]}')
    assert read_json_file(j) == {"a": [1, 2]}
    j.write_bytes(b'{"a": [1,\n 2,]}')
    with pytest.raises(TextFileError, match=r"not valid JSON.*line 2, column"):
        read_json_file(j)
    t = tmp_path / "a.toml"
    t.write_bytes(BOM + b"[fdfo]\r\nepochs = 3\r\nnegative_prompt = 'blurry'\r\n")
    assert read_toml_file(t) == {"fdfo": {"epochs": 3, "negative_prompt": "blurry"}}


# --- prompts (CLI and library) --------------------------------------------------------------------


def test_bom_prompt_file_does_not_keep_the_mark_in_the_first_prompt(tmp_path):
    """The issue's example: a prompts file saved with a UTF-8 BOM gave '\\ufeffa red square'."""
    f = tmp_path / "prompts.txt"
    f.write_bytes(BOM + "a red square\r\n# comment\r\n\r\ntwo blue circles\r\n".encode())
    assert read_prompts(f) == ["a red square", "two blue circles"]
    j = tmp_path / "prompts.json"
    j.write_bytes(BOM + json.dumps(["\ufeffa red square", {"prompt": " b "}]).encode())
    assert read_prompts(j) == ["a red square", "b"]


def test_pasted_text_with_a_bom_and_odd_separators():
    assert parse_prompt_text("\ufeffa red square\r\nb\rc\n") == ["a red square", "b", "c"]
    # a form feed or U+2028 inside a prompt is not a line end for us
    assert parse_prompt_text("a\u2028b\nc") == ["a\u2028b", "c"]


def test_cli_train_reports_a_latin1_prompts_file_without_a_traceback(tmp_path, capsys):
    """The issue's example: a Latin-1 prompts file stopped `fdfo train` with a UnicodeDecodeError."""
    f = tmp_path / "latin1.txt"
    f.write_bytes("a cat\ncaf\xe9 on a table\n".encode("latin-1"))
    rc = main(["train", "--prompts", str(f), "--reward", "brightness", "--run-dir", str(tmp_path / "run"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err and "UnicodeDecodeError" not in err
    assert str(f) in err and "line 2, column 4" in err and "\\xe9" in err and "UTF-8" in err


def test_cli_sample_reads_prompts_the_same_way(tmp_path, capsys):
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"r\xe9sum\xe9\n")
    assert main(["sample", "--prompts", str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "line 1, column 2" in err and "Traceback" not in err


def test_cli_preview_prompts_file_is_read_like_the_prompts(tmp_path, capsys):
    good = tmp_path / "p.txt"
    good.write_text("a red circle\n")
    bad = tmp_path / "preview.txt"
    bad.write_bytes(b"two \x96 squares\n")
    rc = main(["train", "--prompts", str(good), "--preview-prompts", str(bad), "--reward", "brightness",
               "--run-dir", str(tmp_path / "run"), "--no-progress", "--epochs", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "preview prompts file" in err and "\\x96" in err and "Traceback" not in err


# --- TOML config -----------------------------------------------------------------------------------


def test_toml_config_with_bom_and_crlf(tmp_path):
    """tomllib itself refuses a BOM ('Invalid statement') and raises UnicodeDecodeError on Latin-1."""
    t = tmp_path / "c.toml"
    t.write_bytes(BOM + b"[fdfo]\r\nepochs = 7\r\nnegative_prompt = \"blurry\"\r\n")
    cfg = load_config(toml_path=t)
    assert cfg.epochs == 7 and cfg.negative_prompt == "blurry"
    t.write_bytes(b"[fdfo]\nnegative_prompt = \"fl\xe9che\"\n")
    with pytest.raises(ConfigError, match=r"config file .*c\.toml is not valid UTF-8.*line 2, column 22"):
        load_config(toml_path=t)
    t.write_bytes(b"[fdfo\nepochs = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(toml_path=t)


def test_cli_reports_a_bad_toml_without_a_traceback(tmp_path, capsys):
    t = tmp_path / "c.toml"
    t.write_bytes(b"epochs = 1\nnegative_prompt = '\xff'\n")
    p = tmp_path / "p.txt"
    p.write_text("a\n")
    assert main(["train", "--prompts", str(p), "--config", str(t), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "c.toml" in err and "Traceback" not in err and "UTF-8" in err


# --- reward option files and replies ----------------------------------------------------------------


def test_vlm_question_file(tmp_path):
    from fdfo_core.rewards import RewardError, reward_options
    from fdfo_core.rewards.vlm import read_question_file

    assert "question_file" in reward_options("vlm")
    q = tmp_path / "q.txt"
    q.write_bytes(BOM + b'Does this image show "{prompt}"?\r\nAnswer Yes or No.\r\n')
    assert read_question_file(q) == 'Does this image show "{prompt}"?\nAnswer Yes or No.'
    q.write_bytes(b"Est-ce tr\xe8s beau ?")
    with pytest.raises(RewardError, match=r"VLM question file .*q\.txt is not valid UTF-8.*column 10"):
        read_question_file(q)
    q.write_bytes(BOM + b"  \r\n")
    with pytest.raises(RewardError, match="empty"):
        read_question_file(q)


def test_remote_reply_with_a_bom_is_read():
    from fdfo_core.rewards.remote import RemoteReward

    r = RemoteReward("http://127.0.0.1:9/")
    assert r.parse_reply(BOM + b'{"scores": [0.5, 2]}', 2) == [0.5, 2.0]


def test_model_json_files_with_a_bom(tmp_path):
    """Pipeline index, settings file and preprocessor configs: JSON written by other tools."""
    from fdfo_core.backends.diffusers_backend import model_settings, pipeline_class_name
    from fdfo_core.rewards.clip_common import ImageTransform

    (tmp_path / "model_index.json").write_bytes(BOM + b'{"_class_name": "StableDiffusion3Pipeline"}\r\n')
    (tmp_path / "fdfo.json").write_bytes(BOM + b'{"height": 512}')
    assert pipeline_class_name(tmp_path) == "StableDiffusion3Pipeline"
    assert model_settings(tmp_path) == {"height": 512}
    pre = tmp_path / "preprocessor_config.json"
    pre.write_bytes(BOM + b'{"size": {"shortest_edge": 32}, "crop_size": 32}')
    assert ImageTransform.from_preprocessor_config(pre).size == 32


def test_the_trainer_never_passes_a_bom_to_the_encoder():
    """Prompts from any source (a ComfyUI text node of another pack, a Python caller) lose stray BOMs."""
    import torch

    from fdfo_core.config import FDFOConfig
    from fdfo_core.run.hooks import Callbacks
    from fdfo_core.methods import FDFOTrainer

    from flow2d import MinusDistance, PointBackend, VelocityMLP

    tr = FDFOTrainer(PointBackend(VelocityMLP(8)), MinusDistance(), ["\ufeffa red square\r", "\ufeff"],
                     FDFOConfig(height=16, width=16, pairs_per_epoch=2, num_steps=2), callbacks=Callbacks(log=None))
    assert tr.prompts == ["a red square"]
    assert torch.is_tensor(tr.params[0])
