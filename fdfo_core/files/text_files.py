"""Reading text files that users write: prompt lists, reward option files, TOML configs, JSON.

Every text file FDFO reads goes through this module, so files from any editor or system behave
the same everywhere (CLI, ComfyUI nodes, rewards, picks files):

- the encoding is UTF-8; a UTF-8 byte-order mark (Windows Notepad, Excel's "CSV UTF-8") is
  dropped, and UTF-16 / UTF-32 files that start with their byte-order mark (PowerShell 5's
  ``>`` redirection, Notepad's "Unicode") are decoded as what the mark says;
- line ends may be ``\\n`` (Unix), ``\\r\\n`` (Windows) or ``\\r`` (classic Mac): the text comes
  back with ``\\n`` only;
- bytes that are not UTF-8 (a file saved as Latin-1 / Windows-1252, or a binary file) raise a
  `TextFileError` that names the file, the byte offset, line and column, shows the offending
  bytes and says how to fix it (save the file as UTF-8). It is a ValueError: the CLI prints it
  without a traceback and the nodes show it under the node.

Use `read_text_file` for plain text, `read_lines` for one-item-per-line lists (prompts, picks),
`read_json_file` and `read_toml_file` for structured files, and `decode_text` for bytes that do
not come from a file (an upload, a reply body)::

    from fdfo_core.files.text_files import read_lines
    prompts = read_lines(path, what="prompts file")
"""

from __future__ import annotations

import codecs
import json
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32 LE"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32 BE"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16 LE"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16 BE"),
)

HOW_TO_FIX = (
    "Save the file as UTF-8 (in most editors: Save As -> Encoding: UTF-8; on the command line: "
    "iconv -f WINDOWS-1252 -t UTF-8 in.txt > out.txt) and try again."
)


class TextFileError(ValueError):
    """A text file is missing, is a folder, is not valid UTF-8, or does not parse.

    The message names the file and says what to do. For a decoding failure, `offset` (byte
    offset), `line` and `column` (1-based, column in characters) and `bad_bytes` locate it.
    """

    def __init__(self, message: str, path: str | None = None, offset: int | None = None,
                 line: int | None = None, column: int | None = None, bad_bytes: bytes | None = None):
        super().__init__(message)
        self.path = path
        self.offset = offset
        self.line = line
        self.column = column
        self.bad_bytes = bad_bytes


def normalize_newlines(text: str) -> str:
    """``\\r\\n`` and lone ``\\r`` -> ``\\n``."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode_error(data: bytes, err: UnicodeDecodeError, source: str, start: int) -> TextFileError:
    """A TextFileError that locates `err` (raised while decoding data[start:]) in `data`."""
    offset = start + err.start
    bad = data[offset : start + err.end]
    before = data[start:offset]
    line = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
    line_start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
    prefix = before[line_start:].decode("utf-8", errors="replace")
    column = len(prefix) + 1
    shown = "".join(f"\\x{b:02x}" for b in bad) or "end of file"
    context = data[start + line_start : offset + 12].split(b"\n")[0].split(b"\r")[0]
    hint = ""
    if b"\x00" in data[:4096]:
        hint = " The file holds NUL bytes: it looks like a binary file or UTF-16 without a byte-order mark."
    else:
        try:  # show how the line reads in the usual legacy encoding, so the user recognises it
            guess = context.decode("cp1252")
            hint = f" The line reads as Windows-1252 / Latin-1 text: {guess!r}."
        except UnicodeDecodeError:
            pass
    return TextFileError(
        f"{source} is not valid UTF-8: byte(s) {shown} at byte offset {offset} (line {line}, column {column}) "
        f"cannot be decoded.{hint} {HOW_TO_FIX}",
        path=source, offset=offset, line=line, column=column, bad_bytes=bad,
    )


def decode_text(data: bytes, source: str = "the text") -> str:
    """Decode bytes as UTF-8 (or as the UTF-16/32 its byte-order mark names), drop the mark and
    turn every line end into ``\\n``.

    `source` names the bytes in error messages ("prompts file /data/p.txt").
    Raises TextFileError (a ValueError) on bytes that do not decode.
    """
    encoding, start = "utf-8", 0
    for bom, codec, _ in _BOMS:
        if data.startswith(bom):
            encoding, start = codec, len(bom)
            break
    try:
        text = data[start:].decode(encoding)
    except UnicodeDecodeError as e:
        if encoding != "utf-8":
            raise TextFileError(
                f"{source} starts with a {encoding.upper()} byte-order mark but does not decode as "
                f"{encoding.upper()} at byte offset {start + e.start}. {HOW_TO_FIX}",
                path=source, offset=start + e.start, bad_bytes=data[start + e.start : start + e.end],
            ) from None
        raise _decode_error(data, e, source, start) from None
    return normalize_newlines(text)


def _checked_path(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise TextFileError(f"{what} {path} does not exist", path=str(path))
    if path.is_dir():
        raise TextFileError(f"{what} {path} is a folder; give a file", path=str(path))
    return path


def read_text_file(path: str | Path, what: str = "text file") -> str:
    """The text of a file as `decode_text` returns it (BOM dropped, ``\\n`` line ends).

    `what` names the file's role in messages ("prompts file", "VLM question file").
    Raises TextFileError when the file is missing, is a folder, or does not decode.
    """
    path = _checked_path(path, what)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TextFileError(f"cannot read {what} {path}: {e.strerror or e}", path=str(path)) from e
    return decode_text(data, f"{what} {path}")


def split_lines(text: str) -> list[str]:
    """Lines of `text`, split only at ``\\n``, ``\\r\\n`` and ``\\r``.

    (str.splitlines also splits at form feeds, U+2028 and other separators that can sit inside
    a prompt copied from a web page.)
    """
    return normalize_newlines(text).split("\n")


def clean_line(line: str) -> str:
    """A line without surrounding whitespace and without U+FEFF (a byte-order mark that a paste
    or a concatenation of files left inside the text; it is invisible and never meant)."""
    return line.replace("\ufeff", "").strip()


def read_lines(path: str | Path, what: str = "text file", comments: bool = True) -> list[str]:
    """Non-empty lines of a text file, stripped (see `clean_line`); with `comments`, lines whose
    first non-blank character is '#' are skipped. Raises TextFileError like `read_text_file`."""
    return parse_lines(read_text_file(path, what), comments=comments)


def parse_lines(text: str, comments: bool = True) -> list[str]:
    """The `read_lines` rules applied to text already in memory (a pasted text widget)."""
    out = []
    for line in split_lines(text):
        line = clean_line(line)
        if line and not (comments and line.startswith("#")):
            out.append(line)
    return out


def read_json_file(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file (UTF-8, a BOM allowed). Syntax errors raise TextFileError with line and column."""
    text = read_text_file(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TextFileError(
            f"{what} {Path(path)} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}",
            path=str(path), line=e.lineno, column=e.colno,
        ) from None


def read_toml_file(path: str | Path, what: str = "TOML file") -> dict[str, Any]:
    """Parse a TOML file (UTF-8, a BOM and CRLF allowed). Syntax errors raise TextFileError."""
    text = read_text_file(path, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TextFileError(f"{what} {Path(path)} is not valid TOML: {e}", path=str(path)) from None
