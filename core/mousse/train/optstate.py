"""An optimizer's state under flat names, `<part>.state.<param name>.<buffer>`, and back: what a
checkpoint stores, and what a run on any number of ranks reads back by parameter name (from the
single optimizer file, or from the shards `mousse.distributed.sharded` wrote)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor
from torch.optim import Optimizer

from mousse.optim.routing import CombinedOptimizer

FORMAT = "mousse-checkpoint-1"
# Distributed runs (mousse.distributed.sharded) write the optimizer state as one shard per rank instead
# of optimizer.safetensors, with this index naming the shards.
OPTIMIZER_INDEX = "optimizer-index.json"
# (part, param name) -> (the open file holding its state, its flat keys there, the file's
# non-tensor state)
_Where = dict[tuple[str, str], tuple[safe_open, list[str], dict[str, Any]]]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the path and the fix."""


def json_default(value: object) -> dict[str, str]:
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


def json_hook(obj: dict[str, Any]) -> torch.dtype | dict[str, Any]:
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
        "param_groups": json.dumps(groups, default=json_default),
        "extra": json.dumps(extra, default=json_default),
    }
    return tensors, meta


def unflatten_optimizer(
    opt: CombinedOptimizer, tensors: dict[str, Tensor], meta: Mapping[str, str]
) -> dict[str, Any]:
    """The inverse of `flatten_optimizer`, indexed for `opt` (whose param names must match)."""
    groups = json.loads(meta["param_groups"], object_hook=json_hook)
    extra = json.loads(meta["extra"], object_hook=json_hook)
    if set(groups) != set(opt.parts):
        raise _other_parts(groups, opt)
    out = {}
    for part, saved_groups in groups.items():
        current = [
            opt.param_names[id(p)] for g in opt.parts[part].param_groups for p in g["params"]
        ]
        saved = [n for g in saved_groups for n in g["params"]]
        if saved != current:
            raise _other_params()
        index = {n: i for i, n in enumerate(current)}
        state: dict[int, dict[str, Any]] = {}
        prefix = f"{part}.state."
        for flat, value in [*tensors.items(), *extra.items()]:
            if flat.startswith(prefix):
                name, key = flat[len(prefix) :].rsplit(".", 1)
                state.setdefault(index[name], {})[key] = value
        param_groups = [{**g, "params": [index[n] for n in g["params"]]} for g in saved_groups]
        out[part] = {"state": state, "param_groups": param_groups}
    return out


# ---- sharded optimizer state (written by mousse.distributed.rank), read by parameter name ----------


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


def optimizer_state_by_name(opt: CombinedOptimizer, ckpt: Path) -> dict[str, Any]:
    """A state dict for `opt` (a CombinedOptimizer over all or some of a model's parameters),
    assembled by parameter name from a checkpoint's optimizer file or shards, reading only the
    tensors `opt` needs. Hyperparameters come from the saved group that held each of opt's
    groups' first parameter."""
    with contextlib.ExitStack() as stack:
        groups: dict[str, dict[str, dict[str, Any]]] = {}  # part -> param name -> saved group
        where: _Where = {}  # (part, param) -> (handle, [keys], extra)
        for path in optimizer_files(ckpt):
            fh, saved, extra, keys = _open_optimizer_file(stack, path)
            for part, part_groups in saved.items():
                for g in part_groups:
                    hyper = {k: v for k, v in g.items() if k != "params"}
                    for name in g["params"]:
                        groups.setdefault(part, {})[name] = hyper
            by_param: dict[tuple[str, str], list[str]] = {}
            for key in [*keys, *extra]:
                part = key.split(".state.", 1)[0]
                by_param.setdefault((part, param_of(key)), []).append(key)
            for (part, name), ks in by_param.items():
                where[(part, name)] = (fh, ks, extra)
        if not set(opt.parts) <= set(groups):
            raise _other_parts(groups, opt)
        return {
            part: _part_state(opt, part, o, groups[part], where) for part, o in opt.parts.items()
        }


def _open_optimizer_file(
    stack: contextlib.ExitStack[bool | None], path: Path
) -> tuple[safe_open, dict[str, list[dict[str, Any]]], dict[str, Any], list[str]]:
    """(open handle, saved param groups, non-tensor state, tensor keys) of one optimizer file; a
    damaged or foreign file is a CheckpointError."""
    try:
        fh = stack.enter_context(safe_open(path, framework="pt"))
        meta = fh.metadata() or {}
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a mousse checkpoint ({FORMAT})")
        saved = json.loads(meta["param_groups"], object_hook=json_hook)
        extra = json.loads(meta["extra"], object_hook=json_hook)
        keys = list(fh.keys())
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise unreadable(path, exc) from None
    return fh, saved, extra, keys


def _other_parts(saved: Iterable[str], opt: CombinedOptimizer) -> CheckpointError:
    """The error for a checkpoint whose optimizer parts are not the ones this run needs."""
    return CheckpointError(
        f"checkpoint optimizer has parts {sorted(saved)}, this run needs {sorted(opt.parts)}: "
        "resume with the same --optimizer"
    )


def _other_params() -> CheckpointError:
    """The error for a checkpoint saved for other parameters."""
    return CheckpointError(
        "checkpoint parameters do not match this model: resume with the same preset and model shape"
    )


def unreadable(path: Path, exc: Exception) -> CheckpointError:
    """The error for a checkpoint file that cannot be read (most often a truncated write)."""
    return CheckpointError(
        f"checkpoint file {path} is unreadable ({exc}); it may be truncated: resume from an "
        "earlier checkpoint"
    )


def _part_state(
    opt: CombinedOptimizer,
    part: str,
    o: Optimizer,
    groups: dict[str, dict[str, Any]],
    where: _Where,
) -> dict[str, Any]:
    """One part's state dict, its groups and state indexed the way `o` numbers its params."""
    state: dict[int, dict[str, Any]] = {}
    param_groups, index = [], 0
    for g in o.param_groups:
        names = [opt.param_names[id(p)] for p in g["params"]]
        if any(n not in groups for n in names):
            raise _other_params()
        ids = list(range(index, index + len(names)))
        index += len(names)
        param_groups.append({**groups[names[0]], "params": ids})
        for i, name in zip(ids, names, strict=True):
            if (part, name) not in where:
                continue  # no state yet (never stepped), as in a single process
            fh, keys, extra = where[(part, name)]
            for key in keys:
                buffer = key.rsplit(".", 1)[1]
                # safetensors leaves safe_open.get_tensor unannotated
                value = extra[key] if key in extra else fh.get_tensor(key)  # type: ignore[no-untyped-call]
                state.setdefault(i, {})[buffer] = value
    return {"state": state, "param_groups": param_groups}


def read_index(ckpt: Path) -> dict[str, Any] | None:
    """A sharded checkpoint's index (None for the single-file layout)."""
    path = Path(ckpt) / OPTIMIZER_INDEX
    return json.loads(path.read_text()) if path.is_file() else None
