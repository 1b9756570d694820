"""Token data: the built-in standard-library corpus, plain text, and llm.c / modded-nanoGPT shards.

Everything is memory-mapped read-only (torch.from_file, copy-on-write), so multi-GB shard sets cost
no RAM up front. Batches are a pure function of (seed, step): a resumed or re-split run sees
exactly the tokens of an uninterrupted one.

The built-in corpus holds out whole files spread over it (`split = "files"`: every k-th file of
its sorted order, `held_out_files`) and is evaluated on a fixed sample of windows drawn across
them (`val_batches`); runs recorded before that held out its tail (`split = "tail"`). Text and
shard data keep their own validation files, or their tail.
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import os
import struct
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256
HEADER_BYTES = 4 * HEADER_INTS
BYTE_VOCAB, GPT2_VOCAB = 256, 50304  # GPT-2's 50257 tokens padded to a multiple of 128
FILE_SEP = b"\n\x1c\n"  # between concatenated files (0x1c is ASCII "file separator")
VAL_MIN = 1 << 19  # a tail split holds out max(1%, 512 Ki tokens), at most 10%, as validation
MIN_VAL_FILES = 16  # held-out files of the built-in corpus: at least this many, spread over it
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test"}
# How the built-in corpus is split: whole files held out across it, or its tail (before files)
Split = Literal["files", "tail"]
VAL_WINDOW_SEED = 0x5EED  # the sampled validation windows' own generator: the same for every run


class DataError(ValueError):
    """Unusable data; the message names the file and the fix."""


class TokenSource:
    """A read-only window [start, stop) onto the concatenation of 1-D token tensors."""

    def __init__(self, parts: list[Tensor], name: str, start: int = 0, stop: int | None = None):
        self.parts, self.name = parts, name
        self._ends = [0]
        for p in parts:
            self._ends.append(self._ends[-1] + len(p))
        self.start, self.stop = start, self._ends[-1] if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    def get(self, start: int, length: int) -> Tensor:
        """Tokens [start, start+length) of this window as int64, across part boundaries."""
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"[{start}, {start + length}) outside a source of {len(self)} tokens")
        lo, hi, out = self.start + start, self.start + start + length, []
        i = bisect.bisect_right(self._ends, lo) - 1
        while lo < hi:
            take = min(hi, self._ends[i + 1]) - lo
            if take > 0:
                off = lo - self._ends[i]
                out.append(self.parts[i][off : off + take])
            lo, i = lo + take, i + 1
        return torch.cat(out).long() if out else torch.empty(0, dtype=torch.long)

    def split_tail(self, n: int) -> tuple[TokenSource, TokenSource]:
        """(everything but the last n tokens, the last n tokens)."""
        cut = self.stop - n
        return (
            TokenSource(self.parts, self.name, self.start, cut),
            TokenSource(self.parts, self.name, cut, self.stop),
        )


@dataclass(frozen=True)
class Dataset:
    """Train and validation tokens; `split` says where validation came from: "files" (whole
    files held out across the built-in corpus, evaluated on sampled windows), "tail" (the
    corpus's tail) or "val data" (validation files or shards of their own)."""

    train: TokenSource
    val: TokenSource
    vocab_size: int
    content_hash: str
    source: str
    description: str
    split: str

    def describe(self) -> str:
        return self.description


def load_dataset(
    spec: str = "builtin", val_spec: str | None = None, split: Split = "files"
) -> Dataset:
    """Open `spec`: "builtin", a text file or folder (bytes, vocab 256), or .bin token shards
    (a file, folder or glob; vocab 50304). Validation comes from `val_spec` if given, else from
    shards named *val* in a folder or glob, else from the tail of the corpus; the built-in
    corpus's from `split` (held-out files, or its tail)."""
    if spec == "builtin":
        if val_spec is not None:
            raise DataError(
                "a separate validation set needs a data path; the builtin corpus has its own split"
            )
        return _builtin(split)
    files = _resolve(spec)
    is_shards = _is_shards(files, spec)
    val_files = []
    if is_shards and (os.path.isdir(spec) or glob.has_magic(spec)):  # never train on val shards
        val_files = [f for f in files if "val" in f.name]
        files = [f for f in files if "val" not in f.name]
        if not files:
            raise DataError(
                f"{spec}: every shard matched is a val shard (name contains 'val'); "
                f"point the data path at the train shards"
            )
    train, h_train = (_shards if is_shards else _text)(files, spec)
    vocab, unit = (GPT2_VOCAB, "tokens") if is_shards else (BYTE_VOCAB, "bytes")
    if val_spec is not None:
        vfiles = _resolve(val_spec)
        if _is_shards(vfiles, val_spec) != is_shards:
            raise DataError(
                f"{val_spec}: validation data must be the same kind as {spec} "
                f"(both .bin shards or both text)"
            )
        val, h_val = (_shards if is_shards else _text)(vfiles, val_spec)
        how = f"val from {val_spec}"
    elif val_files:  # used only when no explicit val_spec
        val, h_val = _shards(val_files, spec)
        how = f"{len(val_files)} val shard(s)"
    else:
        train, val = train.split_tail(_val_len(len(train)))
        h_val, how = "tail", "val = corpus tail"
    kind = f"{len(files)} .bin shard(s)" if is_shards else f"{len(files)} text file(s)"
    desc = f"{kind} at {spec}, {_m(len(train))} train / {_m(len(val))} val {unit} ({how})"
    content_hash = hashlib.sha256(f"{h_train}|{h_val}".encode()).hexdigest()
    kept = "tail" if h_val == "tail" else "val data"
    return Dataset(train, val, vocab, content_hash, spec, desc, kept)


def train_batch(
    source: TokenSource,
    seed: int,
    step: int,
    batch_size: int,
    seq_len: int,
    rows: slice | None = None,
) -> tuple[Tensor, Tensor]:
    """(x, y) int64 of shape (rows, seq_len), y = x shifted by one. The random offsets of the whole
    global batch depend only on (seed, step); `rows` picks a subset (a micro batch or a rank's
    share), so any split of the rows reproduces the same global batch."""
    need = batch_size * (seq_len + 1)
    if len(source) < need:
        raise DataError(
            f"{source.name}: {len(source)} training tokens, fewer than one batch "
            f"({batch_size} x {seq_len + 1} = {need}); use more data or a smaller "
            f"batch size or sequence length"
        )
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) % (1 << 63))
    offsets = torch.randint(0, len(source) - seq_len, (batch_size,), generator=g)
    offsets = offsets[rows] if rows is not None else offsets
    buf = torch.stack([source.get(o, seq_len + 1) for o in offsets.tolist()])
    return buf[:, :-1], buf[:, 1:]


def check_fits(
    data: Dataset, batch_size: int, micro_batch_size: int, seq_len: int, seed: int
) -> None:
    """DataError before any work when a batch or a validation sequence does not fit the data."""
    train_batch(data.train, seed, 1, batch_size, seq_len, slice(0, 1))
    next(val_batches(data, 1, micro_batch_size, seq_len))


def check_tokens(x: Tensor, vocab_size: int, source: TokenSource) -> Tensor:
    """`x` (a CPU batch) when every token id is below the vocabulary; else a DataError (an
    embedding lookup would fail, or read garbage on a GPU)."""
    top = int(x.max()) if x.numel() else 0
    if top >= vocab_size:
        raise DataError(
            f"{source.name}: token id {top} is outside the vocabulary of {vocab_size}; "
            "the shards are not GPT-2 tokens (re-export them with the GPT-2 tokenizer)"
        )
    return x


def val_batches(
    data: Dataset, n_tokens: int, batch_size: int, seq_len: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """A fixed set of (x, y) batches of `data`'s validation tokens, about n_tokens tokens in all
    (at least one batch, capped at what the split holds; if it holds less than one batch, a
    single batch with as many rows as fit). Held-out files (split "files") give windows drawn
    across them (`window_offsets`: the same for every run); any other split contiguous batches
    from its start, as before."""
    source = data.val
    rows = min(batch_size, (len(source) - 1) // seq_len)
    if rows < 1:
        raise DataError(
            f"{source.name}: validation split has {len(source)} tokens, fewer than one "
            f"sequence ({seq_len + 1}); use more validation data or a shorter sequence"
        )
    per = rows * seq_len
    n_batches = max(1, min(n_tokens, len(source) - 1) // per)
    if data.split == "files":
        offsets = window_offsets(len(source), seq_len, n_batches * rows)
        for b in range(n_batches):
            buf = torch.stack(
                [source.get(o, seq_len + 1) for o in offsets[b * rows : (b + 1) * rows]]
            )
            yield buf[:, :-1], buf[:, 1:]
        return
    for b in range(n_batches):
        buf = source.get(b * per, per + 1)
        yield buf[:-1].view(rows, seq_len), buf[1:].view(rows, seq_len)


def window_offsets(n_tokens: int, seq_len: int, count: int) -> list[int]:
    """`count` start offsets of windows of seq_len + 1 tokens drawn uniformly across a source of
    n_tokens, from a generator of their own (VAL_WINDOW_SEED: never the run's, so every run and
    seed evaluates the same windows; fewer windows are a prefix of more)."""
    g = torch.Generator().manual_seed(VAL_WINDOW_SEED)
    return torch.randint(0, n_tokens - seq_len, (count,), generator=g).tolist()


# --- readers ---------------------------------------------------------------------------------


def _m(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def _val_len(n: int) -> int:
    return min(max(n // 100, VAL_MIN), n // 10)


def _mmap(path: Path, n_bytes: int) -> Tensor:
    """Read-only (copy-on-write) memory map of the first n_bytes of path as uint8; a file it
    cannot map (unreadable, a name torch cannot pass on) is a DataError."""
    try:
        str(path).encode("utf-8")
        return torch.from_file(str(path), shared=False, size=n_bytes, dtype=torch.uint8)
    except UnicodeEncodeError:
        raise DataError(
            f"{path}: its name is not UTF-8, which torch cannot open; rename it (or link it "
            "under a UTF-8 name) and pass that"
        ) from None
    except RuntimeError as exc:  # torch's: "unable to open file <...>: Permission denied (13)"
        raise DataError(
            f"{path}: cannot be read ({str(exc).rpartition(': ')[2]}); make it readable, or "
            "leave it out of the data path"
        ) from None


def _resolve(spec: str) -> list[Path]:
    """The files a spec names, sorted: a file, a glob, or every non-hidden file under a folder
    (only its .bin files if it holds any)."""
    p = Path(spec).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = [
            f
            for f in p.rglob("*")
            if f.is_file() and not any(s.startswith(".") for s in f.relative_to(p).parts)
        ]
        if any(f.suffix == ".bin" for f in files):
            files = [f for f in files if f.suffix == ".bin"]
    elif glob.has_magic(spec):
        files = [Path(f) for f in glob.glob(os.path.expanduser(spec), recursive=True)]
        files = [f for f in files if f.is_file()]
    else:
        raise DataError(
            f"{spec}: no such file or folder; pass 'builtin', a text file or folder, "
            f"or .bin token shards (file, folder or glob)"
        )
    if not files:
        raise DataError(f"{spec}: matched no files; point at a text file, folder or .bin shards")
    return sorted(files)


def _is_shards(files: list[Path], spec: str) -> bool:
    bins = sum(f.suffix == ".bin" for f in files)
    if bins and bins != len(files):
        raise DataError(f"{spec}: mixes .bin shards with other files; match only one kind")
    return bins > 0


def _text(files: list[Path], spec: str) -> tuple[TokenSource, str]:
    """Text files as bytes joined by FILE_SEP; the identity is the sha256 of that byte stream."""
    parts: list[Tensor] = []
    h, sep = hashlib.sha256(), torch.frombuffer(bytearray(FILE_SEP), dtype=torch.uint8)
    for f in files:
        size = f.stat().st_size
        if size == 0:
            continue
        if parts:
            parts.append(sep)
            h.update(FILE_SEP)
        parts.append(_mmap(f, size))
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    if not parts:
        raise DataError(f"{spec}: empty corpus (0 bytes); point the data path at non-empty text")
    return TokenSource(parts, spec), h.hexdigest()


def _shards(files: list[Path], spec: str) -> tuple[TokenSource, str]:
    """Validated uint16 shards. The identity hashes each shard's name, header and first and last
    MiB rather than every byte, so opening a multi-GB set stays instant."""
    parts, h = [], hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        if size < HEADER_BYTES:
            raise DataError(
                f"{f}: {size} bytes, shorter than the {HEADER_BYTES}-byte shard header; "
                f"the file is truncated or not a token shard, re-export it"
            )
        with open(f, "rb") as fh:
            header = fh.read(HEADER_BYTES)
            magic, version, n = struct.unpack("<3i", header[:12])
            if magic != SHARD_MAGIC:
                raise DataError(
                    f"{f}: bad magic {magic} (expected {SHARD_MAGIC}), not an llm.c / "
                    f"modded-nanoGPT token shard; re-export it, or drop the .bin suffix "
                    f"to read it as text"
                )
            if version != SHARD_VERSION:
                raise DataError(
                    f"{f}: shard version {version}, only version {SHARD_VERSION} "
                    f"(uint16 tokens) is supported; re-export it as version 1"
                )
            end = HEADER_BYTES + 2 * n
            if n < 0 or size < end:
                raise DataError(
                    f"{f}: truncated shard: header says {n} tokens ({end} bytes) but the "
                    f"file has {size} bytes; re-download or re-export it"
                )
            h.update(f"{f.name}:{n}:".encode() + header)
            fh.seek(HEADER_BYTES)
            h.update(fh.read(min(2 * n, 1 << 20)))
            fh.seek(max(HEADER_BYTES, end - (1 << 20)))
            h.update(fh.read(min(2 * n, 1 << 20)))
        if n:
            parts.append(_mmap(f, end)[HEADER_BYTES:].view(torch.uint16))
    if not parts:
        raise DataError(
            f"{spec}: empty corpus (0 tokens in {len(files)} shard(s)); "
            f"point the data path at non-empty shards"
        )
    return TokenSource(parts, spec), h.hexdigest()


# --- the built-in corpus -------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("MOUSSE_CACHE") or Path.home() / ".cache" / "mousse")


def stdlib_files() -> list[Path]:
    """The standard library's *.py files, sorted by relative path, minus site-packages and tests."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = (f.relative_to(root) for f in root.rglob("*.py"))
    return [
        root / r
        for r in sorted(rel, key=Path.as_posix)
        if not _EXCLUDED_DIRS.intersection(r.parts[:-1]) and (root / r).is_file()
    ]


def _builtin(split: Split) -> Dataset:
    """The stdlib corpus, built once per Python version into the cache (atomically) with its
    sha256 beside it (a cache file that no longer matches its hash is rebuilt), split by
    `split`: held-out files (`_split_files`) or its tail."""
    path = cache_dir() / f"stdlib-py{'.'.join(map(str, sys.version_info[:3]))}.bytes"
    sha_path = path.with_suffix(".sha256")
    data = path.read_bytes() if path.is_file() and sha_path.is_file() else None
    digest = hashlib.sha256(data).hexdigest() if data is not None else None
    if data is None or digest != sha_path.read_text().strip():
        files = stdlib_files()
        data = FILE_SEP.join(f.read_bytes() for f in files)
        if not data:
            raise DataError(
                f"{sysconfig.get_paths()['stdlib']}: no standard-library sources found "
                f"for the builtin corpus; pass a data path instead"
            )
        digest = hashlib.sha256(data).hexdigest()
        try:  # temp file + rename: concurrent ranks never see a half-written cache
            path.parent.mkdir(parents=True, exist_ok=True)
            for target, content in ((path, data), (sha_path, f"{digest}\n".encode())):
                tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
                tmp.write_bytes(content)
                os.replace(tmp, target)
        except OSError:
            pass  # unwritable cache: use the corpus uncached, rebuild next time
    corpus = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if split == "tail":  # the content hash is the corpus's, as every run before files recorded
        train, val = TokenSource([corpus], "builtin").split_tail(_val_len(len(corpus)))
        how, content_hash = "the corpus tail", digest
    else:
        train, val, how = _split_files(corpus, file_spans(data))
        content_hash = hashlib.sha256(f"{digest}|files".encode()).hexdigest()
    desc = f"builtin stdlib corpus, {_m(len(train))} train / {_m(len(val))} val bytes (val: {how})"
    return Dataset(train, val, BYTE_VOCAB, content_hash, "builtin", desc, split)


def file_spans(corpus: bytes) -> list[tuple[int, int]]:
    """[start, end) of each file of a corpus joined by FILE_SEP, in order."""
    spans, start = [], 0
    while (end := corpus.find(FILE_SEP, start)) != -1:
        spans.append((start, end))
        start = end + len(FILE_SEP)
    spans.append((start, len(corpus)))
    return spans


def held_out_files(sizes: list[int], target: int) -> range:
    """The indices of the files to hold out: every k-th file (from k // 2), for the largest k
    whose files hold at least `target` bytes in all, and at most one file in MIN_VAL_FILES (so
    that they spread over the corpus's packages); every other file when none does."""
    n = len(sizes)
    for k in range(max(2, n // MIN_VAL_FILES), 1, -1):
        if sum(sizes[k // 2 :: k]) >= target:
            return range(k // 2, n, k)
    return range(1, n, 2)


def _split_files(
    corpus: Tensor, spans: list[tuple[int, int]]
) -> tuple[TokenSource, TokenSource, str]:
    """(train, val, how): the files `held_out_files` picks (at least the tail split's size,
    `_val_len`) joined by FILE_SEP as val; the rest, their separators kept, as train."""
    if len(spans) < 2:
        raise DataError("the builtin corpus has a single file, none to hold out; pass --split tail")
    picked = held_out_files([e - s for s, e in spans], _val_len(len(corpus)))
    sep = torch.frombuffer(bytearray(FILE_SEP), dtype=torch.uint8)
    val_parts: list[Tensor] = []
    train_parts: list[Tensor] = []
    kept_from = 0
    for i in picked:
        start, end = spans[i]
        val_parts += [sep, corpus[start:end]] if val_parts else [corpus[start:end]]
        # the file and the separator before it (after it, for the first file) leave train
        cut_from, cut_to = (start - len(FILE_SEP), end) if i else (0, end + len(FILE_SEP))
        if cut_from > kept_from:
            train_parts.append(corpus[kept_from:cut_from])
        kept_from = cut_to
    if kept_from < len(corpus):
        train_parts.append(corpus[kept_from:])
    how = f"{len(picked)} of {len(spans)} files held out, one in {picked.step}"
    return TokenSource(train_parts, "builtin"), TokenSource(val_parts, "builtin"), how
