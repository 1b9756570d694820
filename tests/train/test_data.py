import itertools
import sysconfig
from pathlib import Path

import pytest
import torch
from support.data import write_shard

from mousse.train import data
from mousse.train.data import DataError, load_dataset, train_batch, val_batches


def test_builtin_is_cached_deterministic_and_split(tmp_path, monkeypatch):
    """The tail split (every run before `split`) keeps the corpus's own hash as its identity:
    those runs' checkpoints resume on it."""
    monkeypatch.setenv("MOUSSE_CACHE", str(tmp_path / "a"))
    first, again = load_dataset(split="tail"), load_dataset(split="tail")  # build, then cached
    assert first.content_hash == again.content_hash and first.vocab_size == 256
    corpus, sha = sorted((tmp_path / "a").iterdir())  # *.bytes, *.sha256
    assert sha.read_text().strip() == first.content_hash
    assert load_dataset().content_hash not in (first.content_hash, None)  # files: another split
    assert len(first.val) == data.VAL_MIN and len(first.train) > 5_000_000
    assert torch.equal(first.val.get(0, 1000), again.val.get(0, 1000))
    assert first.describe().startswith("builtin stdlib corpus")
    size = corpus.stat().st_size
    corpus.write_bytes(b"corrupt")
    assert load_dataset(split="tail").content_hash == first.content_hash
    assert corpus.stat().st_size == size
    monkeypatch.setenv("MOUSSE_CACHE", str(sha))  # not a folder: the corpus is used uncached
    assert load_dataset(split="tail").content_hash == first.content_hash
    with pytest.raises(DataError, match="separate validation set needs a data path"):
        load_dataset("builtin", str(tmp_path))


def test_text_file_and_folder(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(bytes(range(256)) * 40)
    ds = load_dataset(str(f))
    assert ds.vocab_size == 256 and len(ds.train) + len(ds.val) == 10240 and len(ds.val) == 1024
    assert ds.train.get(0, 256).tolist() == list(range(256))
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_bytes(b"world")
    (folder / "sub" / "c.md").write_bytes(b"!")
    (folder / "a.txt").write_bytes(b"hello")
    (folder / ".hidden").write_bytes(b"secret")
    (folder / "empty.txt").write_bytes(b"")
    ds = load_dataset(str(folder), val_spec=str(f))
    expected = data.FILE_SEP.join([b"hello", b"world", b"!"])
    assert bytes(ds.train.get(0, len(ds.train)).tolist()) == expected
    assert (
        len(ds.val) == 10240
        and "4 text file(s)" in ds.describe()
        and "10.2K val bytes" in ds.describe()
    )
    assert ds.content_hash == load_dataset(str(folder), val_spec=str(f)).content_hash
    assert ds.content_hash != load_dataset(str(folder), val_spec=str(folder)).content_hash


def test_shards_folder_glob_and_explicit_val(tmp_path):
    write_shard(tmp_path / "fw_train_000.bin", list(range(1000)))
    write_shard(tmp_path / "fw_train_001.bin", [65535, 50000] * 500)
    write_shard(tmp_path / "fw_val_000.bin", [7] * 300)
    for spec in (str(tmp_path), str(tmp_path / "fw_*.bin")):
        ds = load_dataset(spec)
        assert ds.vocab_size == 50304 and len(ds.train) == 2000 and len(ds.val) == 300
        assert ds.train.get(998, 4).tolist() == [998, 999, 65535, 50000]  # across shards
        assert ds.train.get(0, 5).dtype == torch.int64
        assert "2 .bin shard(s)" in ds.describe()
    ds = load_dataset(str(tmp_path), val_spec=str(tmp_path / "fw_train_000.bin"))
    assert len(ds.train) == 2000 and len(ds.val) == 1000  # val-named shards still never train
    single = load_dataset(str(tmp_path / "fw_val_000.bin"))  # one file: train, tail as val
    assert len(single.train) + len(single.val) == 300 and len(single.val) == 30


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(magic=123), r"bad magic 123.*re-export"),
        (dict(version=2), r"version 2.*re-export"),
        (dict(cut=3), r"truncated shard: header says 100 tokens.*re-download"),
        (dict(n=-1), r"truncated shard"),
    ],
)
def test_bad_shards(tmp_path, kwargs, match):
    path = write_shard(tmp_path / "x_train.bin", list(range(100)), **kwargs)
    with pytest.raises(DataError, match=match) as err:
        load_dataset(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_bad_corpora(tmp_path):
    (tmp_path / "short.bin").write_bytes(b"\0" * 100)
    (tmp_path / "empty.txt").write_bytes(b"")
    write_shard(tmp_path / "nothing.bin", [])
    (tmp_path / "mixed").mkdir()
    write_shard(tmp_path / "mixed" / "a.bin", [1, 2, 3])
    write_shard(tmp_path / "mixed" / "val.bin", [1])
    (tmp_path / "mixed" / "a.txt").write_bytes(b"text")
    for spec, val, match in [
        ("short.bin", None, "short.bin: 100 bytes, shorter than the 1024-byte shard header"),
        ("empty.txt", None, "empty corpus"),
        ("nothing.bin", None, "empty corpus"),
        ("missing", None, "no such file or folder"),
        ("*.nothing", None, "matched no files"),
        ("mixed/*", None, "mixes .bin shards"),
        ("mixed/val*", None, "every shard matched is a val shard"),
        ("mixed/a.bin", "empty.txt", "same kind"),
    ]:
        with pytest.raises(DataError, match=match):
            load_dataset(str(tmp_path / spec), val and str(tmp_path / val))


def _source(tmp_path, n=5000):
    f = tmp_path / "t.txt"
    f.write_bytes(
        bytes(torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(0)).tolist())
    )
    return load_dataset(str(f))


def test_train_batch_is_a_pure_function_of_seed_and_step(tmp_path):
    ds = _source(tmp_path)
    x, y = train_batch(ds.train, seed=1, step=3, batch_size=8, seq_len=16)
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x, train_batch(ds.train, 1, 3, 8, 16)[0])
    assert not torch.equal(x, train_batch(ds.train, 1, 4, 8, 16)[0])
    assert not torch.equal(x, train_batch(ds.train, 2, 3, 8, 16)[0])
    for cuts in ([0, 8], [0, 3, 8], [0, 1, 2, 5, 8]):
        parts = [
            train_batch(ds.train, 1, 3, 8, 16, rows=slice(a, b))
            for a, b in itertools.pairwise(cuts)
        ]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
    strided = train_batch(ds.train, 1, 3, 8, 16, rows=slice(1, None, 2))[0]  # a rank's share
    assert torch.equal(strided, x[1::2])
    with pytest.raises(DataError, match=r"t.txt: 4500 training tokens, fewer than one batch"):
        train_batch(ds.train, 1, 3, 512, 16)


def test_val_batches_are_fixed_and_contiguous(tmp_path):
    ds = _source(tmp_path, n=20000)  # val = last 2000 bytes
    batches = list(val_batches(ds, 1000, batch_size=4, seq_len=50))
    assert len(batches) == 5 and all(x.shape == (4, 50) for x, _ in batches)
    assert torch.equal(batches[0][0][0], ds.val.get(0, 50))
    assert torch.equal(batches[1][1][0], ds.val.get(201, 50))
    again = list(val_batches(ds, 1000, batch_size=4, seq_len=50))
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(batches, again, strict=True)
    )
    assert len(list(val_batches(ds, 10**9, 4, 50))) == 9  # capped by the split
    ((x, _),) = val_batches(ds, 1000, batch_size=64, seq_len=100)  # smaller than one batch
    assert x.shape == (19, 100)
    with pytest.raises(DataError, match="fewer than one sequence"):
        next(val_batches(ds, 1000, 4, 5000))


def _files(source: data.TokenSource) -> list[bytes]:
    """The files of a source of the built-in corpus (joined by FILE_SEP)."""
    return bytes(source.get(0, len(source)).tolist()).split(data.FILE_SEP)


def test_builtin_holds_out_whole_files_spread_over_the_corpus(builtin_data):
    """Every file is in train or in val, never both; val holds at least the tail split's bytes,
    in files from many packages of the corpus's sorted order; the split is the same each time."""
    tail = load_dataset(split="tail")
    assert builtin_data.split == "files" and tail.split == "tail"
    train, val = _files(builtin_data.train), _files(builtin_data.val)
    corpus = _files(data.TokenSource(tail.train.parts, "builtin"))  # the whole corpus
    assert sorted(train + val) == sorted(corpus) and not set(train) & set(val)
    assert len(builtin_data.val) >= len(tail.val)
    assert len(val) >= data.MIN_VAL_FILES
    picked = data.held_out_files(
        [len(f) for f in corpus], data._val_len(len(data.FILE_SEP.join(corpus)))
    )
    assert [corpus[i] for i in picked] == val  # in corpus order: spread, not one package
    root = Path(sysconfig.get_paths()["stdlib"])
    names = [f.relative_to(root).parts for f in data.stdlib_files()]
    packages = {names[i][0] if len(names[i]) > 1 else "" for i in picked}
    assert len(packages) >= 10, packages
    again = load_dataset()
    assert again.content_hash == builtin_data.content_hash
    assert torch.equal(again.val.get(0, len(again.val)), builtin_data.val.get(0, len(again.val)))


def test_held_out_files_by_hand():
    """The largest k whose every k-th file (from k // 2) holds the target, at most one file in
    MIN_VAL_FILES."""
    sizes = [10] * 64  # k at most 64 // 16 = 4
    assert data.held_out_files(sizes, 160) == range(2, 64, 4)  # 16 files, 160 bytes
    assert data.held_out_files(sizes, 161) == range(1, 64, 3)  # 21 files
    assert data.held_out_files(sizes, 10**6) == range(1, 64, 2)  # none holds it: every other


def test_val_windows_are_a_fixed_sample_across_the_held_out_files(builtin_data):
    """The same windows each time, whatever the global RNG (so every run and seed evaluates the
    same ones), drawn across the whole held-out set, fewer windows a prefix of more."""

    def windows(n_tokens, rows):
        return torch.cat([x for x, _ in val_batches(builtin_data, n_tokens, rows, 64)])

    torch.manual_seed(1)
    first = windows(64 * 64, 16)
    torch.manual_seed(2)
    assert torch.equal(windows(64 * 64, 16), first) and first.shape == (64, 64)
    assert torch.equal(windows(64 * 32, 8)[:32], first[:32])
    offsets = data.window_offsets(len(builtin_data.val), 64, 64)
    assert torch.equal(first[0], builtin_data.val.get(offsets[0], 64))
    assert max(offsets) - min(offsets) > len(builtin_data.val) // 2  # across, not from the start
    x, y = next(val_batches(builtin_data, 64 * 16, 16, 64))
    assert torch.equal(x[:, 1:], y[:, :-1])
