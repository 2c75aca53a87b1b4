"""Fetch a reward's weights from the Hugging Face Hub, on request only.

Offline stays the default: the rewards never download anything by themselves. `fdfo rewards fetch
NAME...` and the reward nodes' "fetch missing weights" switch (off by default) call `fetch_weights`,
which puts exactly the files a reward's loader reads into the reward folder where the loaders look
(`weights.reward_dirs()`, the first one; docs/rewards.md has the layout):

- **Only the files needed.** A `FetchPart` lists the files of one sub-folder, each as alternatives
  in order of preference (`model.safetensors`, else `pytorch_model.bin`; a sharded checkpoint's
  index, then the shards it names); PickScore gets the CLIP-H tokenizer and preprocessor files,
  never CLIP-H's 4 GB weights. Files are looked up with a metadata request (HEAD) first, which also
  gives the sizes for the progress and the space check.
- **Atomic.** Files are downloaded into a staging folder `<reward folder>/.fdfo-fetch/<folder>/`
  (a hidden name: never listed, never looked in by a loader). Only when every file is complete and
  the part passes the loader's own check is the folder renamed into place (or, when the folder
  already exists with some files, each missing file renamed in, the files the check looks for
  last). A half-downloaded folder is therefore never mistaken for a model.
- **Resumable and checked.** Each file is streamed by huggingface_hub's own HTTP download
  (`file_download.http_get`: its session, headers, proxies and retries) into `<file>.part` in the
  staging folder, which a later fetch continues with an HTTP range request as long as the Hub still
  serves the same file (same ETag); an interrupted fetch (Ctrl-C, a dropped connection, Cancel in
  ComfyUI) goes on where it stopped when run again. A complete file is checked against the size and
  the content hash the Hub announced (its ETag: SHA-256 for large files, the git blob SHA-1 for
  small ones); a file that differs is deleted, so the next fetch starts it cleanly.
- **The Hub's settings.** `HF_ENDPOINT` (a mirror), `HF_TOKEN` (gated or private repositories) and
  the offline switches `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` are read when a fetch starts (not
  only when huggingface_hub was imported); offline, a fetch is refused with a message saying how to
  turn it on or put the files by hand.

Progress: `progress(done_bytes, total_bytes)` is called as bytes arrive (the ComfyUI node turns it
into its progress bar); without it huggingface_hub's tqdm bars show (the command line).
"""

from __future__ import annotations

import re

import contextlib
import hashlib
import inspect
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .base import RewardError
from .weights import (
    COMFY_FOLDER_NAME,
    ENV_VAR,
    WeightSource,
    has_clip_processor,
    has_file,
    has_transformers_model,
    reward_dirs,
)

#: Hidden folder inside a reward folder where downloads are staged until complete.
STAGING = ".fdfo-fetch"
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}


class FetchError(RewardError):
    """A fetch could not complete; the message says why and what to do (the files fetched so far are
    kept in the staging folder and a new fetch continues them)."""


@dataclass(frozen=True)
class FetchFile:
    """One file of a part: alternatives in order of preference (the first the Hub has wins)."""

    names: tuple[str, ...]
    required: bool = True


def _files(*specs: str | tuple[str, ...], optional: Sequence[str] = ()) -> tuple[FetchFile, ...]:
    out = [FetchFile(s if isinstance(s, tuple) else (s,)) for s in specs]
    out += [FetchFile((name,), required=False) for name in optional]
    return tuple(out)


#: Weights of a transformers model: one file, else a sharded index (its shards follow).
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CLIP_TOKENIZER_OPTIONAL = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class FetchPart:
    """The files of one sub-folder of the reward folder, from one Hub repository.

    folder: the sub-folder the loaders look for; check: the loader's own test of that folder
    (None when it holds what is needed); files: what to download.
    """

    what: str
    repo: str
    folder: str
    files: tuple[FetchFile, ...]
    check: Callable[[Path], str | None]
    revision: str = "main"
    alt_folders: tuple[str, ...] = field(default_factory=tuple)

    @property
    def link(self) -> str:
        return f"https://huggingface.co/{self.repo}"


# ---- what each reward needs ----------------------------------------------------------------------


def _clip_h_processor() -> FetchPart:
    # PickScore and HPSv2 read only the tokenizer and preprocessing of CLIP-H, never its weights.
    return FetchPart("the CLIP-ViT-H-14 tokenizer and preprocessor", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                     "CLIP-ViT-H-14-laion2B-s32B-b79K",
                     _files("preprocessor_config.json", "vocab.json", "merges.txt", optional=CLIP_TOKENIZER_OPTIONAL),
                     has_clip_processor)


def _transformers_model(what: str, repo: str, folder: str, extra: Sequence[str] = (), optional: Sequence[str] = (),
                        alt_folders: Sequence[str] = ()) -> FetchPart:
    return FetchPart(what, repo, folder, _files("config.json", WEIGHTS, *extra, optional=optional),
                     has_transformers_model, alt_folders=tuple(alt_folders))


def _clip_model(repo: str = "openai/clip-vit-large-patch14", folder: str | None = None) -> FetchPart:
    name = repo.rstrip("/").split("/")[-1]
    return _transformers_model(f"CLIP model {repo}", repo, folder or name, extra=("preprocessor_config.json",),
                               optional=("vocab.json", "merges.txt", "spiece.model", *CLIP_TOKENIZER_OPTIONAL),
                               alt_folders=(name,) if folder else ())


def _encoder(kind: str, model: str | None) -> FetchPart:
    from .image_encoders import DEFAULT_MODELS, ENCODER_KINDS

    if kind not in ENCODER_KINDS:
        raise FetchError(f"unknown image encoder {kind!r}; choose one of {', '.join(ENCODER_KINDS)}")
    repo = model or DEFAULT_MODELS[kind]
    name = repo.rstrip("/").split("/")[-1]
    if kind == "csd":
        from .csd_convert import CSD_FILES

        return FetchPart(f"the CSD style encoder {repo}", repo, "csd", _files("model.safetensors", optional=("config.json",)),
                         has_file(*CSD_FILES), alt_folders=(name,))
    if kind == "clip":
        return _clip_model(repo)
    return _transformers_model(f"the {kind} image encoder {repo}", repo, name, extra=("preprocessor_config.json",),
                               optional=("spiece.model", "tokenizer.json", "tokenizer_config.json",
                                         "special_tokens_map.json"))


def _pickscore(options: Mapping[str, Any]) -> list[FetchPart]:
    return [FetchPart("PickScore_v1", "yuvalkirstain/PickScore_v1", "pickscore", _files("config.json", WEIGHTS),
                      has_transformers_model), _clip_h_processor()]


def _hpsv2(options: Mapping[str, Any]) -> list[FetchPart]:
    from .clip_rewards import HPS_FILES

    version = str(options.get("version") or "2.1")
    if version not in HPS_FILES:
        raise FetchError(f"hpsv2: unknown version {version!r}; use one of {', '.join(HPS_FILES)}")
    name = HPS_FILES[version]
    # One version's checkpoint is enough; the folder check asks for exactly that file.
    return [FetchPart(f"the HPSv{version} checkpoint", "xswu/HPSv2", "hpsv2", _files(name), has_file(name)),
            _clip_h_processor()]


def _aesthetic(options: Mapping[str, Any]) -> list[FetchPart]:
    from .clip_rewards import AESTHETIC_HEAD_FILES

    # The LAION head is published on GitHub; trl's DDPO uses this Hub copy of the same MLP.
    head = FetchPart("the aesthetic predictor head (trl-lib's copy of the LAION v2 MLP)", "trl-lib/ddpo-aesthetic-predictor",
                     "aesthetic", _files("aesthetic-model.pth"), has_file(*AESTHETIC_HEAD_FILES))
    return [head, _clip_model()]


def _clipscore(options: Mapping[str, Any]) -> list[FetchPart]:
    return [_clip_model(str(options.get("model") or "openai/clip-vit-large-patch14"))]


def _vlm(options: Mapping[str, Any]) -> list[FetchPart]:
    from .vlm import DEFAULT_VLM

    repo = str(options.get("model") or DEFAULT_VLM)
    name = repo.rstrip("/").split("/")[-1]
    return [_transformers_model(
        f"the vision-language model {repo}", repo, "vlm" if repo == DEFAULT_VLM else name,
        extra=("tokenizer_config.json", "preprocessor_config.json"),
        optional=("generation_config.json", "tokenizer.json", "vocab.json", "merges.txt", "chat_template.json",
                  "chat_template.jinja", "video_preprocessor_config.json", "special_tokens_map.json"),
        alt_folders=(name,))]


def _embedding_reward(options: Mapping[str, Any]) -> list[FetchPart]:
    kind = str(options.get("encoder") or "clip")
    kind = "clip" if kind == "auto" else kind
    parts = [_encoder(kind, options.get("model"))]
    # The text terms need a dual encoder: CLIP ViT-L/14 unless the encoder has a text tower.
    wants_text = options.get("content_captions") or float(options.get("prompt_weight") or 0) or options.get("use_prompt")
    if wants_text and kind in ("dinov2", "csd"):
        parts.append(_clip_model())
    return parts


PLANS: dict[str, Callable[[Mapping[str, Any]], list[FetchPart]]] = {
    "pickscore": _pickscore,
    "hpsv2": _hpsv2,
    "aesthetic": _aesthetic,
    "clipscore": _clipscore,
    "vlm": _vlm,
    "reference": _embedding_reward,
    "preference": _embedding_reward,
    "clip": lambda o: [_encoder("clip", o.get("model"))],
    "siglip": lambda o: [_encoder("siglip", o.get("model"))],
    "dinov2": lambda o: [_encoder("dinov2", o.get("model"))],
    "csd": lambda o: [_encoder("csd", o.get("model"))],
}


def fetchable() -> list[str]:
    """Names `fetch_weights` knows: the learned rewards and the image encoders."""
    return sorted(PLANS)


def fetch_plan(name: str, options: Mapping[str, Any] | None = None) -> list[FetchPart]:
    """The parts (sub-folders and their files) reward `name` needs with these reward options."""
    key = name.strip().lower()
    if key not in PLANS:
        raise FetchError(f"nothing to fetch for {name!r}: fetchable names are {', '.join(fetchable())} "
                         "(weight-free rewards need no files)")
    return PLANS[key](dict(options or {}))


# ---- the Hub's settings, read at call time -----------------------------------------------------------


def offline_switch() -> str | None:
    """The environment variable that puts the Hub offline, or None."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _token() -> str | None:
    # huggingface_hub reads HF_TOKEN and the saved login itself; None lets it.
    return os.environ.get("HF_TOKEN") or None


# ---- fetching ------------------------------------------------------------------------------------


@dataclass
class FetchResult:
    """What a fetch did: the folders now in place and the parts that were there already."""

    folders: list[Path] = field(default_factory=list)
    already_present: list[Path] = field(default_factory=list)
    bytes_downloaded: int = 0


def present(part: FetchPart, dirs: Sequence[Path] | None = None) -> Path | None:
    """An existing folder in the reward folders that passes the part's check, or None."""
    for d in dirs if dirs is not None else reward_dirs():
        for name in (part.folder, *part.alt_folders):
            c = d / name
            if c.exists() and part.check(c) is None:
                return c
    return None


def destination(dest: str | os.PathLike | None = None) -> Path:
    """Where fetched weights go: `dest`, else the first reward folder (FetchError when there is none)."""
    if dest:
        return Path(dest).expanduser()
    dirs = reward_dirs()
    if not dirs:
        raise FetchError(f"no reward folder to fetch into: set {ENV_VAR} to a folder (or pass --dest), or run inside "
                         f"ComfyUI, where it is ComfyUI/models/{COMFY_FOLDER_NAME}")
    return dirs[0]


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as e:  # pragma: no cover - installed with diffusers / transformers
        raise FetchError("fetching weights needs the huggingface_hub package: pip install huggingface_hub") from e
    return huggingface_hub


@contextlib.contextmanager
def _online(hub: Any) -> Iterator[None]:
    """huggingface_hub reads HF_HUB_OFFLINE once, at import; a fetch asked for while the variable is
    unset now (checked by the caller) may reach the Hub even when it was set then."""
    constants = getattr(hub, "constants", None)
    before = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None and before:
        constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        if constants is not None and before is not None:
            constants.HF_HUB_OFFLINE = before


def _explain(exc: BaseException, part: FetchPart, filename: str, endpoint: str) -> FetchError:
    """A FetchError in the user's terms for an exception of huggingface_hub or the network."""
    name = type(exc).__name__
    where = f"{part.repo}/{filename} from {endpoint}"
    by_hand = f"or download {part.link} by hand into the {part.folder}/ folder (docs/rewards.md)"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    if name in ("OfflineModeIsEnabled",) or offline_switch():
        return FetchError(f"cannot fetch {where}: the Hugging Face Hub is switched off ({offline_switch() or 'offline mode'}"
                          f"=1). Unset it to fetch, {by_hand}")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    # the status of the answer, never a "401" inside a URL (a port such as :46401 or a path)
    if (name in ("GatedRepoError",) or status in (401, 403)
            or re.search(r"(?<![\w:/.])40[13] (Client Error|Unauthorized|Forbidden)", text)):
        return FetchError(f"cannot fetch {where}: the repository needs you to log in (set HF_TOKEN or run "
                          f"`hf auth login`) and accept its licence at {part.link}; {by_hand} ({text})")
    if name in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        return FetchError(f"cannot fetch {where}: the repository or revision is not there ({text}); if it is private or "
                          f"gated set HF_TOKEN; check HF_ENDPOINT if you use a mirror; {by_hand}")
    if "Consistency check failed" in text:
        return FetchError(f"{where} arrived with a different size than the Hub announced ({text}); the partial file was "
                          "deleted: run the fetch again (a mirror set in HF_ENDPOINT may serve a different file)")
    return FetchError(f"cannot fetch {where}: {name}: {text}. Check the network connection, proxies and HF_ENDPOINT "
                      f"(a mirror), then run the fetch again: files fetched so far are kept and continued; {by_hand}")


def _metadata(hub: Any, part: FetchPart, filename: str, endpoint: str, token: str | None) -> Any | None:
    """The Hub's metadata (size, etag) of one file, or None when the repository has no such file."""
    from huggingface_hub.utils import EntryNotFoundError

    url = hub.hf_hub_url(part.repo, filename, revision=part.revision, endpoint=endpoint)
    try:
        return hub.get_hf_file_metadata(url, token=token)
    except EntryNotFoundError:
        return None
    except Exception as e:
        if getattr(getattr(e, "response", None), "status_code", None) == 404 and type(e).__name__ == "HfHubHTTPError":
            return None
        raise _explain(e, part, filename, endpoint) from e


class _Bytes:
    """Counts downloaded bytes across files for one progress callback."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None):
        self.total, self.done, self.progress = total, 0, progress

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)

    def tqdm_class(self) -> Any:
        """A tqdm class that reports to this counter (shown as usual on a terminal)."""
        from tqdm.auto import tqdm

        counter = self

        class _Reporting(tqdm):  # type: ignore[misc, valid-type]
            def update(self, n: float | None = 1) -> bool | None:
                counter.add(int(n or 0))
                return super().update(n)

        return _Reporting


def _verify(path: Path, meta: Any) -> str | None:
    """None when `path` matches the Hub's metadata (size; content hash when the ETag is one: the
    SHA-256 of an LFS file, the git blob SHA-1 of a small file), else what differs."""
    size = path.stat().st_size
    if meta.size is not None and size != meta.size:
        return f"{size} bytes where the Hub announced {meta.size}"
    etag = (meta.etag or "").strip('"').lower()
    if len(etag) in (40, 64) and all(c in "0123456789abcdef" for c in etag):
        h = hashlib.sha256() if len(etag) == 64 else hashlib.sha1(f"blob {size}\0".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != etag:
            return f"content hash {h.hexdigest()[:12]}... where the Hub announced {etag[:12]}..."
    return None


def _download(hub: Any, part: FetchPart, filename: str, meta: Any, staging: Path, token: str | None,
              counter: _Bytes) -> Path:
    """One file into `staging`, continuing `<file>.part` from an earlier, interrupted fetch when the
    Hub still serves the same file (same ETag); the complete file is checked against the Hub's size
    and hash, then renamed from `.part` to its name."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    final = staging / filename
    if final.is_file() and _verify(final, meta) is None:  # completed by an earlier fetch
        counter.add(final.stat().st_size)
        return final
    partial = staging / (filename + ".part")
    tag = staging / (filename + ".part.etag")
    partial.parent.mkdir(parents=True, exist_ok=True)
    if partial.exists() and (not tag.exists() or tag.read_text(encoding="utf-8") != str(meta.etag)):
        partial.unlink()  # the Hub's file changed since: start again
    tag.write_text(str(meta.etag), encoding="utf-8")
    resume = partial.stat().st_size if partial.exists() else 0
    if meta.size is not None and resume > meta.size:
        partial.unlink()
        resume = 0
    counter.add(resume)
    kwargs: dict[str, Any] = {"resume_size": resume, "headers": build_hf_headers(token=token),
                              "expected_size": meta.size, "displayed_filename": filename}
    if "tqdm_class" in inspect.signature(http_get).parameters:
        kwargs["tqdm_class"] = counter.tqdm_class()
    try:
        with open(partial, "ab") as f:
            http_get(meta.location, f, **kwargs)
    except Exception as e:
        if "Consistency check failed" in str(e):
            _drop_partial(staging, filename)
        raise _explain(e, part, filename, hub_endpoint()) from e
    problem = _verify(partial, meta)
    if problem:
        _drop_partial(staging, filename)
        raise FetchError(f"{part.repo}/{filename} arrived with a different size or content than the Hub announced "
                         f"({problem}); the file was deleted: run the fetch again (a mirror set in HF_ENDPOINT may serve "
                         "a different file)")
    os.replace(partial, final)
    tag.unlink(missing_ok=True)
    return final


def _drop_partial(staging: Path, filename: str) -> None:
    """Delete a file's partial download (and any copy of it) so the next fetch starts it cleanly."""
    for p in (staging / filename, staging / (filename + ".part"), staging / (filename + ".part.etag")):
        p.unlink(missing_ok=True)


def _resolve_files(hub: Any, part: FetchPart, staging: Path, endpoint: str, token: str | None,
                   counter: _Bytes) -> list[tuple[str, Any]]:
    """(filename, the Hub's metadata) of every file to download, alternatives resolved; a sharded
    checkpoint's index is downloaded here to learn its shards."""
    chosen: list[tuple[str, Any]] = []
    for f in part.files:
        for name in f.names:
            meta = _metadata(hub, part, name, endpoint, token)
            if meta is None:
                continue
            chosen.append((name, meta))
            if name.endswith(".index.json"):
                index = _download(hub, part, name, meta, staging, token, counter)
                try:
                    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
                except (OSError, ValueError, KeyError, AttributeError) as e:
                    raise FetchError(f"{part.repo}/{name} is not a checkpoint index ({e}); download {part.link} by hand"
                                     ) from e
                for shard in shards:
                    sm = _metadata(hub, part, shard, endpoint, token)
                    if sm is None:
                        raise FetchError(f"{part.repo} lists the shard {shard} in {name} but does not have it; "
                                         f"download {part.link} by hand")
                    chosen.append((shard, sm))
            break
        else:
            if f.required:
                raise FetchError(f"{part.repo} (at {endpoint}) has none of {', '.join(f.names)}, which {part.what} "
                                 f"needs; download {part.link} by hand into the {part.folder}/ folder")
    return chosen


def _check_space(folder: Path, needed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise FetchError(f"not enough space in {folder}: the files need {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB are "
                         "free; free some space, or fetch into another folder (--dest, or the first folder of "
                         f"{ENV_VAR})")


def _publish(staging: Path, target: Path, files: Sequence[str], markers: Sequence[str]) -> None:
    """Move the complete files from `staging` into `target` atomically (see the module docstring)."""
    if not target.exists():
        os.replace(staging, target)
        return
    # The folder exists (files put by hand, an older fetch): rename each file in, the files the
    # loader's check looks for last, so the folder only passes the check once everything is there.
    order = sorted(files, key=lambda n: (n in markers, n))
    for name in order:
        dst = target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, dst)
    shutil.rmtree(staging, ignore_errors=True)


def fetch_weights(name: str, options: Mapping[str, Any] | None = None, dest: str | os.PathLike | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  log: Callable[[str], None] | None = print) -> FetchResult:
    """Download what reward (or encoder) `name` needs into the reward folder; see the module docstring.

    options: the reward's options (the HPSv2 version, a CLIP score / VLM `model` id, the reference
    encoder); dest: the reward folder (default: the first of `reward_dirs()`); progress(done, total)
    in bytes. Parts already present (in any reward folder) are skipped. Raises FetchError with what
    to do (offline, not reachable, login needed, wrong size, no space); KeyboardInterrupt and
    ComfyUI's Cancel pass through, leaving the partial files to be continued.
    """
    say = log or (lambda s: None)
    parts = fetch_plan(name, options)
    root = destination(dest)
    dirs = [root, *[d for d in reward_dirs() if d != root]]
    result = FetchResult()
    todo = []
    for part in parts:
        found = present(part, dirs)
        if found is not None:
            say(f"{part.what}: already in {found}")
            result.already_present.append(found)
        else:
            todo.append(part)
    if not todo:
        return result
    switch = offline_switch()
    if switch:
        missing = ", ".join(f"{p.folder}/ ({p.link})" for p in todo)
        raise FetchError(f"{name}: cannot fetch {missing}: the Hugging Face Hub is switched off ({switch}=1). Unset "
                         f"{switch} to fetch, or download the files by hand into {root} (docs/rewards.md)")
    hub = _hub()
    with _online(hub):
        return _fetch_parts(hub, todo, root, result, progress, say)


def _fetch_parts(hub: Any, todo: Sequence[FetchPart], root: Path, result: FetchResult,
                 progress: Callable[[int, int], None] | None, say: Callable[[str], None]) -> FetchResult:
    endpoint, token = hub_endpoint(), _token()
    counter = _Bytes(0, progress)
    plans = []
    for part in todo:
        staging = root / STAGING / part.folder
        staging.mkdir(parents=True, exist_ok=True)
        files = _resolve_files(hub, part, staging, endpoint, token, counter)
        plans.append((part, staging, files))
    total = sum(meta.size or 0 for _, _, files in plans for _, meta in files)
    _check_space(root, total - sum(_staged_bytes(s) for _, s, _ in plans))
    counter.total, counter.done = total, 0
    for part, staging, files in plans:
        say(f"{part.what}: fetching {len(files)} file(s) from {endpoint}/{part.repo} into {root / part.folder}")
        for filename, meta in files:
            before = counter.done
            path = _download(hub, part, filename, meta, staging, token, counter)
            counter.done = before + path.stat().st_size  # a file counts once, whole, however it arrived
            if progress is not None:
                progress(min(counter.done, counter.total), counter.total)
        problem = part.check(staging)
        if problem:
            raise FetchError(f"{part.what}: the files fetched from {part.repo} do not make a usable folder ({problem}); "
                             f"they are in {staging}; download {part.link} by hand into {root / part.folder}")
        target = root / part.folder
        _publish(staging, target, [f for f, _ in files], markers=_markers(part))
        say(f"{part.what}: ready in {target}")
        result.folders.append(target)
    result.bytes_downloaded = counter.done
    staging_root = root / STAGING
    if staging_root.is_dir() and not any(staging_root.iterdir()):
        staging_root.rmdir()
    return result


def _staged_bytes(staging: Path) -> int:
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) if staging.is_dir() else 0


def _markers(part: FetchPart) -> tuple[str, ...]:
    """The files a folder check looks for (moved in last)."""
    from .weights import TOKENIZER_FILES, WEIGHT_FILES

    return ("config.json", *WEIGHT_FILES, *TOKENIZER_FILES)


def missing_parts(name: str, options: Mapping[str, Any] | None = None) -> list[FetchPart]:
    """The parts of `name` that no reward folder holds yet (for a node's "fetch missing weights")."""
    return [p for p in fetch_plan(name, options) if present(p) is None]


__all__ = ["FetchError", "FetchFile", "FetchPart", "FetchResult", "fetch_plan", "fetch_weights", "fetchable",
           "hub_endpoint", "missing_parts", "offline_switch", "STAGING"]
