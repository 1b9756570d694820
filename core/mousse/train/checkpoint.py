"""Checkpoints as safetensors only (never pickle): model weights, the full optimizer state under
flat names (`<part>.state.<param>.<buffer>`), and trainer state with the resolved config in the
metadata. A checkpoint directory appears whole or not at all (written aside, then renamed)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from mousse.optim.routing import CombinedOptimizer

FORMAT = "mousse-checkpoint-1"
FILES = ("model.safetensors", "optimizer.safetensors", "trainer.safetensors")
_STEP_DIR = re.compile(r"^step-(\d+)$")
# Distributed runs (mousse.dist.rank) write the optimizer state as one shard per rank instead of
# optimizer.safetensors, with this index naming the shards.
OPTIMIZER_INDEX = "optimizer-index.json"
CHECKSUMS = "checksums.json"  # sha256 of every file, written with the checkpoint


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the path and the fix."""


def _json_default(value):
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint metadata")


_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


def _json_hook(obj: dict):
    """Decode a stored dtype by name from an allow-list (never an arbitrary attribute)."""
    if set(obj) == {"__dtype__"}:
        if obj["__dtype__"] not in _DTYPES:
            raise CheckpointError(
                f"checkpoint metadata names an unknown dtype "
                f"{obj['__dtype__']!r}; it is damaged or foreign"
            )
        return _DTYPES[obj["__dtype__"]]
    return obj


def flatten_optimizer(opt: CombinedOptimizer) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors keyed `<part>.state.<param name>.<buffer>`, and the rest (param groups with param
    names, non-tensor state) as JSON metadata."""
    tensors, groups, extra = {}, {}, {}
    for part, sd in opt.state_dict().items():
        params = [p for g in opt.parts[part].param_groups for p in g["params"]]
        names = [opt.param_names[id(p)] for p in params]
        for idx, buffers in sd["state"].items():
            for key, value in buffers.items():
                flat = f"{part}.state.{names[idx]}.{key}"
                if isinstance(value, Tensor):
                    tensors[flat] = value.detach().to("cpu").contiguous().clone()
                else:
                    extra[flat] = value
        groups[part] = [
            {**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]
        ]
    meta = {
        "param_groups": json.dumps(groups, default=_json_default),
        "extra": json.dumps(extra, default=_json_default),
    }
    return tensors, meta


def unflatten_optimizer(opt: CombinedOptimizer, tensors: dict[str, Tensor], meta: dict) -> dict:
    """The inverse of `flatten_optimizer`, indexed for `opt` (whose param names must match)."""
    groups = json.loads(meta["param_groups"], object_hook=_json_hook)
    extra = json.loads(meta["extra"], object_hook=_json_hook)
    if set(groups) != set(opt.parts):
        raise CheckpointError(
            f"checkpoint optimizer has parts {sorted(groups)}, this run has "
            f"{sorted(opt.parts)}: resume with the same --optimizer"
        )
    out = {}
    for part, saved_groups in groups.items():
        current = [
            opt.param_names[id(p)] for g in opt.parts[part].param_groups for p in g["params"]
        ]
        saved = [n for g in saved_groups for n in g["params"]]
        if saved != current:
            raise CheckpointError(
                "checkpoint parameters do not match this model: resume with the "
                "same preset and model shape"
            )
        index = {n: i for i, n in enumerate(current)}
        state: dict[int, dict] = {}
        prefix = f"{part}.state."
        for flat, value in [*tensors.items(), *extra.items()]:
            if flat.startswith(prefix):
                name, key = flat[len(prefix) :].rsplit(".", 1)
                state.setdefault(index[name], {})[key] = value
        param_groups = [{**g, "params": [index[n] for n in g["params"]]} for g in saved_groups]
        out[part] = {"state": state, "param_groups": param_groups}
    return out


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
    trainer_meta: dict,
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
    """The metadata every file of a checkpoint carries."""
    return {"format": FORMAT, "step": str(step)}


def fsync(path: Path) -> None:
    """Flush a written file to disk (before the rename that publishes it)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_model_and_trainer(
    tmp: Path,
    model: torch.nn.Module,
    trainer_tensors: dict[str, Tensor],
    trainer_meta: dict,
    meta: dict[str, str],
) -> None:
    """The model's weights and the trainer's state into a checkpoint being written (`tmp`):
    one process's, or rank 0's beside every rank's optimizer shard."""
    save_file(model_tensors(model), tmp / "model.safetensors", metadata=meta)
    trainer = {k: v.contiguous() for k, v in trainer_tensors.items()}
    save_file(
        trainer,
        tmp / "trainer.safetensors",
        metadata={**meta, **{k: str(v) for k, v in trainer_meta.items()}},
    )
    for name in ("model.safetensors", "trainer.safetensors"):
        fsync(tmp / name)


def commit_checkpoint(tmp: Path, final: Path, keep: int) -> None:
    """Publish a fully written checkpoint: checksums of its files, the rename that makes it
    appear whole, then only the newest `keep` checkpoints beside it are kept."""
    write_checksums(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(final.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def set_aside_later_checkpoints(ckpt_root: Path, step: int) -> list[Path]:
    """Move checkpoints after `step` (a trajectory abandoned by resuming from an earlier one) to
    `abandoned/`, where pruning never reaches; returns their new paths."""
    moved = []
    for ckpt in list_checkpoints(ckpt_root):
        if int(_STEP_DIR.match(ckpt.name).group(1)) > step:
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
    """CheckpointError naming the first file whose bytes differ from those written (a checkpoint
    from before checksums were kept has nothing to verify)."""
    path = ckpt / CHECKSUMS
    if not path.is_file():
        return
    try:
        sums = json.loads(path.read_text())
        if not isinstance(sums, dict):
            raise ValueError("not a table")
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is damaged ({exc}); resume from an earlier checkpoint"
        ) from None
    for name, expected in sums.items():
        try:
            actual = file_digest(ckpt / name)
        except OSError:
            actual = None
        if actual != expected:
            raise CheckpointError(
                f"checkpoint file {ckpt / name} is damaged (its checksum "
                "differs from the one written with it); resume from an "
                "earlier checkpoint"
            )


def latest_valid_checkpoint(path: Path, warn=None) -> Path:
    """`find_checkpoint`, but a run dir's checkpoints that fail their checksums are skipped (each
    reported through `warn`) for the newest that passes; CheckpointError when none does."""
    path = Path(path)
    if is_complete(path):
        verify_checksums(path)
        return path
    found = list_checkpoints(path / "checkpoints")
    if not found:
        find_checkpoint(path)  # raises the 'no checkpoint' error
    for ckpt in reversed(found):
        try:
            verify_checksums(ckpt)
            return ckpt
        except CheckpointError as exc:
            if warn is not None:
                warn(f"{exc}; falling back to the checkpoint before it")
    raise CheckpointError(
        f"every checkpoint in {path / 'checkpoints'} is damaged; the run "
        "cannot resume (start it again)"
    )


def is_complete(ckpt: Path) -> bool:
    """Every file present: model, trainer and the optimizer state (one file, or an index and
    every shard it names)."""
    if not all((ckpt / f).is_file() for f in FILES if f != "optimizer.safetensors"):
        return False
    if (ckpt / "optimizer.safetensors").is_file():
        return True
    try:
        shards = json.loads((ckpt / OPTIMIZER_INDEX).read_text())["shards"]
        return all((ckpt / s).is_file() for s in shards)
    except (OSError, ValueError, KeyError, TypeError):
        return False


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


def find_checkpoint(path: Path) -> Path:
    """A checkpoint dir, given either itself or a run dir (its latest checkpoint)."""
    path = Path(path)
    if is_complete(path):
        return path
    found = list_checkpoints(path / "checkpoints")
    if not found:
        raise CheckpointError(
            f"no checkpoint found at {path}: pass a run dir that has "
            "checkpoints/step-N/ or a checkpoint dir itself"
        )
    return found[-1]


def read_checkpoint(ckpt: Path) -> dict:
    """Load all three files; a truncated, corrupted or foreign checkpoint is a CheckpointError."""
    verify_checksums(ckpt)
    out = {}
    for f in FILES:
        part = f.split(".")[0]
        if part == "optimizer" and not (ckpt / f).exists() and (ckpt / OPTIMIZER_INDEX).is_file():
            continue  # sharded: read by name (optimizer_state_by_name)
        try:
            with safe_open(ckpt / f, framework="pt") as fh:
                out[part] = {k: fh.get_tensor(k) for k in fh.keys()}
                out[part + "_meta"] = fh.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(
                f"checkpoint file {ckpt / f} is unreadable ({exc}); it may be "
                "truncated: resume from an earlier checkpoint"
            ) from None
        if out[part + "_meta"].get("format") != FORMAT:
            raise CheckpointError(f"{ckpt / f} is not a mousse checkpoint ({FORMAT})")
    return out


# ---- sharded optimizer state (written by mousse.dist.rank), read by parameter name ----------


def param_of(flat: str) -> str:
    """The parameter name of a flat optimizer key `<part>.state.<param>.<buffer>`."""
    return flat.split(".state.", 1)[1].rsplit(".", 1)[0]


def optimizer_files(ckpt: Path) -> list[Path]:
    """The optimizer-state files of a checkpoint: the single file, or the shards of its index."""
    single = ckpt / "optimizer.safetensors"
    if single.is_file():
        return [single]
    try:
        index = json.loads((ckpt / OPTIMIZER_INDEX).read_text())
        return [ckpt / s for s in index["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{ckpt} has no readable optimizer state ({exc}); resume from an earlier checkpoint"
        ) from None


def optimizer_state_by_name(opt, ckpt: Path) -> dict:
    """A state dict for `opt` (a CombinedOptimizer over all or some of a model's parameters),
    assembled by parameter name from a checkpoint's optimizer file or shards, reading only the
    tensors `opt` needs. Hyperparameters come from the saved group that held each of opt's
    groups' first parameter."""
    with contextlib.ExitStack() as stack:
        groups: dict[str, dict[str, dict]] = {}  # part -> param name -> saved group (no params)
        where: dict[tuple[str, str], tuple] = {}  # (part, param) -> (handle, [keys], extra)
        for path in optimizer_files(ckpt):
            fh, saved, extra = _open_optimizer_file(stack, path)
            for part, part_groups in saved.items():
                for g in part_groups:
                    hyper = {k: v for k, v in g.items() if k != "params"}
                    for name in g["params"]:
                        groups.setdefault(part, {})[name] = hyper
            by_param: dict[tuple[str, str], list[str]] = {}
            for key in [*fh.keys(), *extra]:
                part = key.split(".state.", 1)[0]
                by_param.setdefault((part, param_of(key)), []).append(key)
            for (part, name), ks in by_param.items():
                where[(part, name)] = (fh, ks, extra)
        missing_parts = sorted(set(opt.parts) - set(groups))
        if missing_parts:
            raise CheckpointError(
                f"checkpoint optimizer has parts {sorted(groups)}, this run "
                f"needs {sorted(opt.parts)}: resume with the same --optimizer"
            )
        return {
            part: _part_state(opt, part, o, groups[part], where) for part, o in opt.parts.items()
        }


def _open_optimizer_file(stack: contextlib.ExitStack, path: Path) -> tuple:
    """(open handle, saved param groups, non-tensor state) of one optimizer file; a damaged or
    foreign file is a CheckpointError."""
    try:
        fh = stack.enter_context(safe_open(path, framework="pt"))
        meta = fh.metadata() or {}
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a mousse checkpoint ({FORMAT})")
        saved = json.loads(meta["param_groups"], object_hook=_json_hook)
        extra = json.loads(meta["extra"], object_hook=_json_hook)
        fh.keys()
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(
            f"checkpoint file {path} is unreadable ({exc}); it may be "
            "truncated: resume from an earlier checkpoint"
        ) from None
    return fh, saved, extra


def _part_state(opt, part: str, o, groups: dict[str, dict], where: dict) -> dict:
    """One part's state dict, its groups and state indexed the way `o` numbers its params."""
    state: dict[int, dict] = {}
    param_groups, index = [], 0
    for g in o.param_groups:
        names = [opt.param_names[id(p)] for p in g["params"]]
        if any(n not in groups for n in names):
            raise CheckpointError(
                "checkpoint parameters do not match this model: resume "
                "with the same preset and model shape"
            )
        ids = list(range(index, index + len(names)))
        index += len(names)
        param_groups.append({**groups[names[0]], "params": ids})
        for i, name in zip(ids, names):
            if (part, name) not in where:
                continue  # no state yet (never stepped), as in a single process
            fh, keys, extra = where[(part, name)]
            for key in keys:
                buffer = key.rsplit(".", 1)[1]
                value = extra[key] if key in extra else fh.get_tensor(key)
                state.setdefault(i, {})[buffer] = value
    return {"state": state, "param_groups": param_groups}


def read_index(ckpt: Path) -> dict | None:
    """A sharded checkpoint's index (None for the single-file layout)."""
    path = Path(ckpt) / OPTIMIZER_INDEX
    return json.loads(path.read_text()) if path.is_file() else None
