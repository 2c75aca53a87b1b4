"""The picks.jsonl record format: writing durably, reading forgivingly where crashes leave damage
and strictly where a person must act."""

from __future__ import annotations

import json

import pytest

from fdfo_core.rewards.pick_records import (
    CHOICES,
    PickRecord,
    PicksError,
    append_pick,
    choice_target,
    human_pairs,
    read_picks,
)


def rec(i: int, choice: str = "left", **kw) -> PickRecord:
    values = dict(prompt=f"prompt {i}", epoch=i // 4, pair_id=i % 4, choice=choice, left_image=f"picks/{i}-l.png",
                  right_image=f"picks/{i}-r.png", seed=1000 + i)
    values.update(kw)
    return PickRecord(**values)


def test_round_trip_and_meaning(tmp_path):
    path = tmp_path / "run" / "picks.jsonl"
    path.parent.mkdir()
    written = [rec(0, "left"), rec(1, "right"), rec(2, "equal"), rec(3, "skip", left_image=None, right_image=None),
               rec(4, "left", source="model", extra={"score": 0.42})]
    for r in written:
        append_pick(path, r)
    data = read_picks(path)
    assert data.problems == [] and data.files == [path]
    got = data.records
    assert [r.choice for r in got] == ["left", "right", "equal", "skip", "left"]
    assert [r.reward_delta for r in got] == [1.0, -1.0, 0.0, None, 1.0]
    assert [r.target for r in got] == [1.0, 0.0, 0.5, None, 1.0]
    assert got[0].image_path("left") == (tmp_path / "run" / "picks" / "0-l.png").resolve()
    assert got[4].source == "model" and got[4].extra == {"score": 0.42}
    assert got[0].seed == 1000 and got[0].timestamp.endswith("Z") and got[0].origin == f"{path}:1"
    assert [r.prompt for r in human_pairs(got)] == ["prompt 0", "prompt 1", "prompt 2"]
    line = json.loads(path.read_text().splitlines()[0])
    assert line["version"] == 1 and set(line) >= {"prompt", "seed", "epoch", "pair_id", "choice", "left_image",
                                                  "right_image", "timestamp", "source"}
    assert data.summary().startswith("5 picks from 1 file(s): 2 left, 1 right, 1 equal, 1 skipped")
    # A run folder stands for its picks.jsonl.
    assert len(read_picks(tmp_path / "run").records) == 5
    assert [choice_target(c) for c in CHOICES] == [1.0, 0.0, 0.5, None]


def test_a_corrected_pick_replaces_the_earlier_one(tmp_path):
    path = tmp_path / "picks.jsonl"
    append_pick(path, rec(0, "left"))
    append_pick(path, rec(1, "left"))
    append_pick(path, rec(0, "right"))  # the artist changed their mind about pair 0
    got = read_picks(path).records
    assert [(r.pair_id, r.choice) for r in got] == [(0, "right"), (1, "left")]


def test_bom_crlf_blank_lines_and_several_files(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_bytes(b"\xef\xbb\xbf" + (rec(0).to_json() + "\r\n\r\n" + rec(1, "right").to_json() + "\r\n").encode())
    b = tmp_path / "b.jsonl"
    b.write_text(rec(0, "equal").to_json() + "\n", encoding="utf-8")
    data = read_picks([a, b])
    assert [r.choice for r in data.records] == ["left", "right", "equal"]  # same pair id, different files: both kept
    assert data.problems == []


def test_damaged_lines_are_skipped_and_reported(tmp_path):
    path = tmp_path / "picks.jsonl"
    lines = [
        rec(0).to_json(),
        '{"version": 1, "prompt": "cut off by a cra',
        json.dumps({**rec(1).to_dict(), "choice": "both"}),
        json.dumps({**rec(2).to_dict(), "epoch": -1}),
        json.dumps({k: v for k, v in rec(3).to_dict().items() if k != "prompt"}),
        json.dumps({**rec(4).to_dict(), "right_image": None}),
        "[1, 2, 3]",
        rec(5, "right").to_json(),
    ]
    path.write_text("\n".join(lines) + "\n")
    data = read_picks(path)
    assert [r.pair_id for r in data.records] == [0, 1]  # rec(5) is epoch 1, pair 1
    assert len(data.problems) == 6
    joined = "\n".join(data.problems)
    for needle in (f"{path}:2: not valid JSON", f"{path}:3: choice must be one of", f"{path}:4: epoch",
                   f"{path}:5: missing field(s) prompt", f"{path}:6: right_image", f"{path}:7: a pick must be a JSON object"):
        assert needle in joined, joined
    with pytest.raises(PicksError, match=f"{path}:2"):
        read_picks(path, strict=True)


def test_newer_format_and_wrong_encoding_are_refused(tmp_path):
    path = tmp_path / "picks.jsonl"
    path.write_text(json.dumps({**rec(0).to_dict(), "version": 2}) + "\n")
    assert "version 2" in read_picks(path).problems[0] and "update ComfyUI-FDFO" in read_picks(path).problems[0]
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(rec(0, prompt="café").to_json().encode("latin-1") + b"\n")
    with pytest.raises(PicksError, match=r"latin.jsonl is not valid UTF-8.*byte offset 29 \(line 1"):
        read_picks(latin)
    utf16 = tmp_path / "utf16.jsonl"  # PowerShell 5's redirection: UTF-16 with a byte-order mark
    utf16.write_bytes(("\ufeff" + rec(0, prompt="café").to_json() + "\r\n").encode("utf-16-le"))
    assert read_picks(utf16).records[0].prompt == "café"
    with pytest.raises(PicksError, match="does not exist"):
        read_picks(tmp_path / "nope.jsonl")
    with pytest.raises(PicksError, match="no picks files"):
        read_picks([])


def test_append_after_a_crash_starts_a_fresh_line(tmp_path):
    path = tmp_path / "picks.jsonl"
    path.write_text(rec(0).to_json() + "\n" + '{"version": 1, "prompt": "half')  # a write cut off, no newline
    append_pick(path, rec(1, "right"))
    data = read_picks(path)
    assert [r.pair_id for r in data.records] == [0, 1] and len(data.problems) == 1
    assert path.read_text().endswith("\n")


def test_invalid_records_cannot_be_built():
    with pytest.raises(PicksError, match="choice"):
        rec(0, "LEFT!")
    with pytest.raises(PicksError, match="left_image"):
        rec(0, "left", left_image="")
    with pytest.raises(PicksError, match="seed"):
        rec(0, seed="12")
    assert rec(0, "skip", left_image=None, right_image=None).reward_delta is None
    # Choices are read case-insensitively from files.
    assert PickRecord.from_dict({**rec(0).to_dict(), "choice": " Right "}).choice == "right"


def test_appending_into_a_missing_or_full_folder_says_so(tmp_path, monkeypatch):
    import errno

    from fdfo_core.files import storage
    with pytest.raises(storage.StorageError, match="picks log"):
        append_pick(tmp_path / "gone" / "picks.jsonl", rec(0))  # the run folder was deleted: not re-created
    path = tmp_path / "picks.jsonl"
    append_pick(path, rec(0))

    def full(operation, p):
        if operation == "write":
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "fault_hook", full)
    with pytest.raises(storage.StorageError, match="(?i)space|full"):
        append_pick(path, rec(1))
    monkeypatch.setattr(storage, "fault_hook", None)
    assert [r.pair_id for r in read_picks(path).records] == [0]  # nothing half-written
