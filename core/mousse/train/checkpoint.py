"""Checkpoints as safetensors only (never pickle): model weights, the full optimizer state under
flat names (`<part>.state.<param>.<buffer>`), and trainer state with the resolved config in the
metadata. A checkpoint directory appears whole or not at all (written aside, then renamed)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from mousse.optim.routing import CombinedOptimizer

from .optstate import (
    FORMAT,
    OPTIMIZER_INDEX,
    CheckpointError,
    flatten_optimizer,
    read_optimizer_index,
    unreadable,
)

FILES = ("model.safetensors", "optimizer.safetensors", "trainer.safetensors")
# A read checkpoint by part: "model" -> its tensors by name, "model_meta" -> its metadata, ...
# Any: safetensors gives tensors and metadata strings, mixed in one dict by part name.
Loaded = dict[str, Any]
_STEP_DIR = re.compile(r"^step-(\d+)$")
CHECKSUMS = "checksums.json"  # sha256 of every file, written with the checkpoint
# The trainer's state as JSON text per key (safetensors metadata holds only strings).
TrainerMeta = Mapping[str, str]


class SaveCheckpoint(Protocol):
    """How a world writes a checkpoint (`World.save_checkpoint`): `save_checkpoint` in one
    process, `mousse.distributed.sharded.save_sharded` for one rank of a torchrun job. Returns
    the checkpoint's directory, `ckpt_root/step-<step>`."""

    def __call__(
        self,
        ckpt_root: Path,
        step: int,
        model: torch.nn.Module,
        opt: CombinedOptimizer,
        trainer_tensors: dict[str, Tensor],
        trainer_meta: TrainerMeta,
        keep: int,
    ) -> Path: ...


class CheckpointUnreadable(CheckpointError):
    """A checkpoint file this process may not read (permissions): not damage, so no earlier
    checkpoint is taken in its place."""


def model_tensors(model: torch.nn.Module) -> dict[str, Tensor]:
    """The model's state on the CPU, as safetensors takes it: it refuses tensors that share
    memory, so a weight tied under two names (an embedding reused as the head) is copied."""
    out, seen = {}, set()
    for name, value in model.state_dict().items():
        value = value.detach().to("cpu").contiguous()
        storage = value.untyped_storage().data_ptr()
        out[name] = value.clone() if storage in seen else value
        seen.add(storage)
    return out


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    opt: CombinedOptimizer,
    trainer_tensors: dict[str, Tensor],
    trainer_meta: TrainerMeta,
    keep: int,
) -> Path:
    """Write `ckpt_root/step-<step>/` atomically and keep only the newest `keep` checkpoints."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(ckpt_root)
    final = ckpt_root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}-", dir=ckpt_root))
    follow_umask(tmp, directory=True)
    try:
        meta = checkpoint_meta(step)
        opt_tensors, opt_meta = flatten_optimizer(opt)
        save_file(opt_tensors, tmp / "optimizer.safetensors", metadata={**meta, **opt_meta})
        fsync(tmp / "optimizer.safetensors")
        write_model_and_trainer(tmp, model, trainer_tensors, trainer_meta, meta)
        commit_checkpoint(tmp, final, keep)
    except (SafetensorError, OSError) as exc:  # disk full, quota, permissions
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"checkpoint step-{step} not written ({exc}); the earlier "
            f"checkpoints in {ckpt_root} are intact: free space and --resume"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def checkpoint_meta(step: int) -> dict[str, str]:
    """The metadata every file of a checkpoint carries: its step, and that a checksums.json is
    written beside it (so a checkpoint that lost it is not read unverified)."""
    return {"format": FORMAT, "step": str(step), "checksums": "true"}  # values: JSON text


def fsync(path: Path) -> None:
    """Flush a written file to disk (before the rename that publishes it)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_model_and_trainer(
    tmp: Path,
    model: torch.nn.Module,
    trainer_tensors: dict[str, Tensor],
    trainer_meta: TrainerMeta,
    meta: dict[str, str],
) -> None:
    """The model's weights and the trainer's state into a checkpoint being written (`tmp`):
    one process's, or rank 0's beside every rank's optimizer shard."""
    save_file(model_tensors(model), tmp / "model.safetensors", metadata=meta)
    trainer = {k: v.contiguous() for k, v in trainer_tensors.items()}
    save_file(
        trainer,
        tmp / "trainer.safetensors",
        metadata={**meta, **trainer_meta},
    )
    for name in ("model.safetensors", "trainer.safetensors"):
        fsync(tmp / name)


def commit_checkpoint(tmp: Path, final: Path, keep: int) -> None:
    """Publish a fully written checkpoint: its files' permissions from the umask, checksums of
    its files, the rename that makes it appear whole, then only the newest `keep` checkpoints
    beside it are kept."""
    for path in tmp.iterdir():
        follow_umask(path)  # safetensors writes 0600
    write_checksums(tmp)
    if final.exists():
        discard(final)
    os.replace(tmp, final)
    for old in list_checkpoints(final.parent)[:-keep]:
        discard(old)


def discard(ckpt: Path) -> None:
    """Delete a published checkpoint dir, renamed to a `.step-N-old-*` temp name first: a kill
    mid-delete never leaves a half-deleted `step-N` that resuming would refuse."""
    aside = Path(tempfile.mkdtemp(prefix=f".{ckpt.name}-old-", dir=ckpt.parent))
    os.replace(ckpt, aside)
    shutil.rmtree(aside, ignore_errors=True)


def set_aside_later_checkpoints(ckpt_root: Path, step: int) -> list[Path]:
    """Move checkpoints after `step` (a trajectory abandoned by resuming from an earlier one) to
    `abandoned/`, where pruning never reaches; returns their new paths."""
    moved = []
    for ckpt in list_checkpoints(ckpt_root):
        named = _STEP_DIR.match(ckpt.name)
        assert named is not None  # list_checkpoints gives step-N dirs only
        if int(named.group(1)) > step:
            target = ckpt_root / "abandoned" / f"{ckpt.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(ckpt, target)
            moved.append(target)
    return moved


def remove_partial_writes(ckpt_root: Path) -> None:
    """Delete `.step-N-*` dirs left by checkpoint writes that were killed (the run dir's lock
    means no other writer is at work)."""
    for stale in ckpt_root.glob(".step-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def follow_umask(path: Path, directory: bool = False) -> None:
    """Give a file made by tempfile (0600, dirs 0700) the permissions the umask gives others, so
    teammates on shared storage can read runs."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(ckpt: Path) -> None:
    """`checksums.json`: the sha256 of every file of a checkpoint dir being written (before its
    rename), fsynced."""
    sums = {
        p.name: file_digest(p)
        for p in sorted(ckpt.iterdir())
        if p.is_file() and p.name != CHECKSUMS
    }
    with open(ckpt / CHECKSUMS, "w", encoding="utf-8") as fh:
        json.dump(sums, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def verify_checksums(ckpt: Path) -> None:
    """CheckpointError naming the first file whose bytes differ from those written, or that its
    checksums.json leaves out: every file the checkpoint is read from is covered, and only
    files inside it are hashed. A checkpoint from before checksums were kept has nothing to
    verify."""
    path = ckpt / CHECKSUMS
    if not path.is_file():
        if _file_meta(ckpt / FILES[0]).get("checksums"):
            raise CheckpointError(
                f"{path} is missing (its files were written with one); resume from an "
                "earlier checkpoint"
            )
        return
    sums = _read_checksums(path)
    for name, expected in sums.items():
        if _digest(ckpt / name) != expected:
            raise CheckpointError(
                f"checkpoint file {ckpt / name} is damaged (its checksum "
                "differs from the one written with it); resume from an "
                "earlier checkpoint"
            )
    for name in checkpoint_files(ckpt):  # read after the checksums: a sharded index is verified
        if name not in sums:
            raise CheckpointError(
                f"checkpoint file {ckpt / name} is not covered by {path} (which lists every "
                "file a checkpoint is written with); resume from an earlier checkpoint"
            )


def _read_checksums(path: Path) -> dict[str, str]:
    """A checksums.json's table, file name -> sha256; CheckpointError when damaged or when it
    names anything but a file of its checkpoint (a path elsewhere, a device)."""
    try:
        sums = json.loads(path.read_text())
        if not isinstance(sums, dict):
            raise ValueError("not a table")
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is damaged ({exc}); resume from an earlier checkpoint"
        ) from None
    for name in sums:
        if not _is_plain_file(path.parent, name):
            raise CheckpointError(
                f"{path} names {name!r}, which is not a file of the checkpoint; resume from an "
                "earlier checkpoint"
            )
    return sums


def _digest(path: Path) -> str | None:
    """`file_digest`, None when the file cannot be read (damage); CheckpointUnreadable when
    read permission is missing."""
    try:
        return file_digest(path)
    except PermissionError as exc:
        raise _unreadable(path, exc) from None
    except OSError:
        return None


def _is_plain_file(ckpt: Path, name: object) -> bool:
    """Whether `name` is a regular file directly inside `ckpt` (not a path elsewhere, a link,
    a device or a FIFO, which hashing would follow or block on)."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        return False
    try:
        return stat.S_ISREG(os.lstat(ckpt / name).st_mode)
    except (OSError, ValueError):  # gone, or a name the file system cannot hold
        return False


def latest_valid_checkpoint(path: Path, warn: Callable[[str], None] | None = None) -> Path:
    """`find_checkpoint`, but a run dir's checkpoints that fail their checksums are skipped (each
    reported through `warn`) for the newest that passes; CheckpointError when none does."""
    path = Path(path)
    if is_complete(path):
        verify_checksums(path)
        return path
    found = find_checkpoints(path)
    for ckpt in reversed(found):
        try:
            verify_checksums(ckpt)
            return ckpt
        except CheckpointUnreadable:
            raise
        except CheckpointError as exc:
            if warn is not None:
                warn(f"{exc}; falling back to the checkpoint before it")
    raise CheckpointError(
        f"every checkpoint in {path / 'checkpoints'} is damaged; the run "
        "cannot resume (start it again)"
    )


def checkpoint_files(ckpt: Path) -> list[str]:
    """The files a checkpoint is read from: model, trainer and the optimizer state (one file, or
    an index and every shard it names; an index that cannot be read: the one file)."""
    if (ckpt / "optimizer.safetensors").is_file():
        return list(FILES)
    try:
        shards = read_optimizer_index(ckpt)["shards"]
    except (OSError, ValueError):
        return list(FILES)
    others = [f for f in FILES if f != "optimizer.safetensors"]
    return [*others, OPTIMIZER_INDEX, *shards]


def missing_files(ckpt: Path) -> list[str]:
    """The files a checkpoint dir lacks: model, trainer and the optimizer state (one file, or an
    index and every shard it names)."""
    return [f for f in checkpoint_files(ckpt) if not (ckpt / f).is_file()]


def is_complete(ckpt: Path) -> bool:
    """Every file of a checkpoint present."""
    return not missing_files(ckpt)


def is_checkpoint_dir(path: Path) -> bool:
    """Whether `path` names a checkpoint dir (rather than a run dir), whole or not."""
    return bool(_STEP_DIR.match(path.name)) or is_complete(path)


def run_dir_of(ckpt: Path) -> Path | None:
    """The run dir whose checkpoint `ckpt` is: R for R/checkpoints/step-N; None for a
    checkpoint anywhere else (set aside in checkpoints/abandoned/, copied elsewhere), which
    belongs to no run dir a resume could continue."""
    ckpt, whole = Path(ckpt), Path(ckpt).absolute()  # `step-6` given from inside checkpoints/
    if whole.parent.name != "checkpoints" or not _STEP_DIR.match(whole.name):
        return None
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else whole.parent.parent


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Every published `checkpoints/step-N` dir of a run dir, whole or not."""
    root = run_dir / "checkpoints"
    return [p for p in root.iterdir() if _STEP_DIR.match(p.name)] if root.is_dir() else []


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint dirs under `ckpt_root`, oldest first (half-written ones are ignored)."""
    if not ckpt_root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in ckpt_root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and is_complete(p)
    ]
    return [p for _, p in sorted(found)]


def find_checkpoints(path: Path) -> list[Path]:
    """A run dir's checkpoints, oldest first. A checkpoint dir that lost a file (published dirs
    appear whole) is a CheckpointError naming it, never passed over: resuming before it would
    later overwrite what is left of it. No checkpoint at all is a CheckpointError too."""
    given = [path] if any((path / f).is_file() for f in FILES) else []  # a checkpoint dir
    for ckpt in given + sorted(checkpoint_dirs(path)):
        if missing := missing_files(ckpt):
            raise CheckpointError(
                f"checkpoint {ckpt} is missing {', '.join(missing)}; put it back, or move "
                "the checkpoint away to resume from the one before it"
            )
    found = list_checkpoints(path / "checkpoints")
    if not found:
        raise CheckpointError(
            f"no checkpoint found at {path}: pass a run dir that has checkpoints/step-N/ or "
            "a checkpoint dir itself (a run that ended before its first checkpoint starts "
            f"again with --resume auto --run-dir {path})"
        )
    return found


def find_checkpoint(path: Path) -> Path:
    """A checkpoint dir, given either itself or a run dir (its latest checkpoint)."""
    path = Path(path)
    return path if is_complete(path) else find_checkpoints(path)[-1]


def _file_meta(path: Path) -> dict[str, str]:
    """The metadata of a checkpoint file (its header only); unreadable: a CheckpointError."""
    try:
        with safe_open(path, framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """The error for a checkpoint file that cannot be read: denied (CheckpointUnreadable), or
    damaged."""
    if isinstance(exc, PermissionError):
        return CheckpointUnreadable(
            f"checkpoint file {path} cannot be read ({exc.strerror}); give yourself read "
            "permission on it (chmod u+r) and resume"
        )
    return unreadable(path, exc)


def read_checkpoint(ckpt: Path) -> Loaded:
    """Load all three files; a truncated, corrupted or foreign checkpoint is a CheckpointError."""
    verify_checksums(ckpt)
    out: Loaded = {}
    read = []
    for f in FILES:
        part = f.split(".")[0]
        if part == "optimizer" and not (ckpt / f).exists() and (ckpt / OPTIMIZER_INDEX).is_file():
            continue  # sharded: read by name (optimizer_state_by_name)
        try:
            with safe_open(ckpt / f, framework="pt") as fh:
                out[part] = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not iterable
                out[part + "_meta"] = fh.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise _unreadable(ckpt / f, exc) from None
        read.append(f)
        if out[part + "_meta"].get("format") != FORMAT:
            raise CheckpointError(f"{ckpt / f} is not a mousse checkpoint ({FORMAT})")
    check_one_step(ckpt, {f: out[f"{f.split('.')[0]}_meta"].get("step") for f in read})
    return out


def check_one_step(ckpt: Path, steps: dict[str, str | None]) -> None:
    """CheckpointError unless every file (`steps`: its name -> the step in its metadata) was
    written at one step, the one the dir is named after."""
    named = _STEP_DIR.match(ckpt.name)
    expected = named.group(1) if named else next(iter(steps.values()))
    for name, step in steps.items():
        if step != expected:
            raise CheckpointError(
                f"checkpoint file {ckpt / name} was written at step {step}, not {expected} "
                "like its checkpoint; put back the right file, or resume from another checkpoint"
            )
