"""FDFO Prompt List / Toy Prompts: typed text, files from ComfyUI's input folder only."""

import os
import types

import pytest

from comfy_scripts.nodepack import submodule

pn = submodule("nodes.prompt_nodes")
PromptError = submodule("fdfo_core.files.prompts").PromptError


@pytest.fixture
def input_dir(tmp_path, monkeypatch):
    root = tmp_path / "input"
    (root / "sets").mkdir(parents=True)
    (root / "a.txt").write_text("a red cube\n\n# a comment\n  a blue sphere  \n")
    (root / "sets" / "b.json").write_text('["one", {"prompt": "two"}, "  "]')
    (root / "image.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("outside\n")
    monkeypatch.setitem(__import__("sys").modules, "folder_paths", types.SimpleNamespace(get_input_directory=lambda: str(root)))
    return root


def test_text_lines_comments_and_blanks():
    prompts, n = pn.FDFOPromptList().build("a cat\n\n  # not a prompt\n a dog \n", pn.NO_FILE)
    assert prompts == ["a cat", "a dog"] and n == 2


def test_lists_only_prompt_files_of_the_input_folder(input_dir):
    assert pn.prompt_files() == ["a.txt", "sets/b.json"]
    choices = pn.FDFOPromptList.INPUT_TYPES()["required"]["file"][0]
    assert choices == [pn.NO_FILE, "a.txt", "sets/b.json"]


def test_file_prompts_follow_typed_ones(input_dir):
    prompts, n = pn.FDFOPromptList().build("typed", "a.txt")
    assert prompts == ["typed", "a red cube", "a blue sphere"]
    assert pn.FDFOPromptList().build("", "sets/b.json")[0] == ["one", "two"]


@pytest.mark.parametrize("name", ["../secret.txt", "sets/../../secret.txt", "/etc/passwd", "..\\secret.txt"])
def test_paths_outside_the_input_folder_are_refused(input_dir, name):
    with pytest.raises(PromptError, match="input folder"):
        pn.FDFOPromptList().build("", name)


def test_symlink_out_of_the_input_folder_is_refused(input_dir):
    os.symlink(input_dir.parent / "secret.txt", input_dir / "link.txt")
    with pytest.raises(PromptError, match="outside"):
        pn.FDFOPromptList().build("", "link.txt")


def test_wrong_suffix_and_missing_file(input_dir):
    with pytest.raises(PromptError, match=".txt"):
        pn.FDFOPromptList().build("", "image.png")
    with pytest.raises(PromptError, match="does not exist"):
        pn.FDFOPromptList().build("", "gone.txt")


def test_empty_list_is_an_error_naming_the_fix(input_dir):
    with pytest.raises(PromptError, match="empty.*one prompt per line"):
        pn.FDFOPromptList().build("  \n# only a comment\n", pn.NO_FILE)


def test_bom_crlf_files_and_pasted_text_with_a_bom(input_dir):
    """Issue 10: files from Notepad (BOM, CRLF), old Macs (CR) and text pasted with a BOM."""
    (input_dir / "win.txt").write_bytes(b"\xef\xbb\xbfa red square\r\n# c\r\nb\r\n")
    (input_dir / "mac.txt").write_bytes(b"one\rtwo\r")
    (input_dir / "w.json").write_bytes(b'\xef\xbb\xbf["x",\r\n "y"]')
    assert pn.FDFOPromptList().build("\ufefftyped\r\n", "win.txt")[0] == ["typed", "a red square", "b"]
    assert pn.FDFOPromptList().build("", "mac.txt")[0] == ["one", "two"]
    assert pn.FDFOPromptList().build("", "w.json")[0] == ["x", "y"]


def test_latin1_file_gives_a_message_naming_file_and_position(input_dir):
    TextFileError = submodule("fdfo_core.files.text_files").TextFileError
    (input_dir / "old.txt").write_bytes("un caf\xe9\n".encode("latin-1"))
    with pytest.raises(TextFileError) as info:
        pn.FDFOPromptList().build("", "old.txt")
    msg = str(info.value)
    assert "old.txt" in msg and "line 1, column 7" in msg and "\\xe9" in msg and "UTF-8" in msg


def test_trainer_and_sampler_prompts_lose_stray_boms():
    clean_prompts = submodule("nodes.sampler_nodes").clean_prompts
    assert clean_prompts(["\ufeffa red square ", "\ufeff", "b"]) == ["a red square", "b"]


def test_is_changed_follows_the_file_content(input_dir):
    before = pn.FDFOPromptList.IS_CHANGED("x", "a.txt")
    assert pn.FDFOPromptList.IS_CHANGED("x", "a.txt") == before
    (input_dir / "a.txt").write_text("something else\n")
    assert pn.FDFOPromptList.IS_CHANGED("x", "a.txt") != before


def test_toy_prompts_are_deterministic_and_split():
    from fdfo_core.toy import toy_prompt_sets

    train, n = pn.FDFOToyPrompts().build(16, "train", 3)
    assert n == 16 and train == pn.FDFOToyPrompts().build(16, "train", 3)[0]
    heldout, _ = pn.FDFOToyPrompts().build(8, "heldout", 3)
    assert not set(train) & set(heldout)
    assert train == toy_prompt_sets(16, 0, seed=3)[0]
