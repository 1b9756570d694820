"""An optimizer's state under flat names, `<rule>.state.<param name>.<buffer>` (the rule, "matrix"
or "scalar", of the param group holding it), and back: what a checkpoint stores, and what a run on
any number of ranks reads back by parameter name (from the single optimizer file, or from the
shards `mousse.distributed.sharded` wrote), whatever the grouping of the run that wrote it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from safetensors import safe_open
from torch import Tensor

from mousse.optim.family import Knobs
from mousse.optim.routing import CombinedOptimizer

from .fileio import JsonObject, read_json, shaped

if TYPE_CHECKING:
    from torch.optim.optimizer import StateDict

FORMAT = "mousse-checkpoint-1"
# Distributed runs (mousse.distributed.sharded) write the optimizer state as one shard per rank instead
# of optimizer.safetensors, with this index naming the shards.
OPTIMIZER_INDEX = "optimizer-index.json"


class _Shards(TypedDict):
    shards: list[str]  # file names in the checkpoint, by rank


class OptimizerIndex(_Shards, total=False):
    """A sharded checkpoint's OPTIMIZER_INDEX (`mousse.distributed.sharded`): its shards, and
    which rank held each parameter's state and owned each matrix; read back by
    `read_optimizer_index`. Only the shards are read: the rest says how the run was laid out."""

    format: str
    step: int
    world_size: int
    location: dict[str, int]  # parameter name -> the shard holding its state
    owners: dict[str, int] | None
    state_bytes: list[int]


def read_optimizer_index(ckpt: Path) -> OptimizerIndex:
    """The checkpoint's optimizer index; missing, unreadable or of another shape: OSError or
    ValueError."""
    index = read_json(ckpt / OPTIMIZER_INDEX)
    if not shaped(index, OptimizerIndex):
        raise ValueError(f"{OPTIMIZER_INDEX} is not an optimizer index")
    return index


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


# JsonObject: any object of the metadata's JSON (groups' knobs, torch's non-tensor state)
def json_hook(obj: JsonObject) -> torch.dtype | JsonObject:
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
    """Tensors keyed `<rule>.state.<param name>.<buffer>` (the rule, "matrix" or "scalar", of
    the param group holding the parameter), and the rest (param groups with param names, by
    rule, and non-tensor state) as JSON metadata: the layout mousse has always written."""
    sd = opt.state_dict()
    names = [opt.param_names[id(p)] for g in opt.param_groups for p in g["params"]]
    tensors: dict[str, Tensor] = {}
    groups: dict[str, list[Knobs]] = {}
    extra: JsonObject = {}  # JsonObject: torch's non-tensor optimizer state, any JSON value
    for g in sd["param_groups"]:
        rule = g["rule"]
        for idx in g["params"]:
            for key, value in sd["state"].get(idx, {}).items():
                flat = f"{rule}.state.{names[idx]}.{key}"
                if isinstance(value, Tensor):
                    tensors[flat] = value.detach().to("cpu").contiguous().clone()
                else:
                    extra[flat] = value
        hyper = {k: v for k, v in g.items() if k not in ("params", "rule")}
        groups.setdefault(rule, []).append({**hyper, "params": [names[i] for i in g["params"]]})
    meta = {
        "param_groups": json.dumps(groups, default=json_default),
        "extra": json.dumps(extra, default=json_default),
    }
    return tensors, meta


def unflatten_optimizer(
    opt: CombinedOptimizer, tensors: dict[str, Tensor], meta: Mapping[str, str]
) -> StateDict:
    """The inverse of `flatten_optimizer`: a state dict for `opt`, its params found by name."""
    groups = json.loads(meta["param_groups"], object_hook=json_hook)
    extra = json.loads(meta["extra"], object_hook=json_hook)
    values = {**tensors, **extra}
    return _state_for(opt, _groups_by_name(groups), _keys_by_param(values), values.__getitem__)


def _groups_by_name(saved: dict[str, list[Knobs]]) -> dict[str, dict[str, Knobs]]:
    """rule -> param name -> the hyperparameters of the saved group that held it."""
    out: dict[str, dict[str, Knobs]] = {}
    for rule, rule_groups in saved.items():
        for g in rule_groups:
            hyper = {k: v for k, v in g.items() if k != "params"}
            out.setdefault(rule, {}).update(dict.fromkeys(g["params"], hyper))
    return out


def _keys_by_param(keys: Iterable[str]) -> dict[tuple[str, str], list[str]]:
    """(rule, param name) -> its flat keys."""
    out: dict[tuple[str, str], list[str]] = {}
    for key in keys:
        out.setdefault((key.split(".state.", 1)[0], param_of(key)), []).append(key)
    return out


def _state_for(
    opt: CombinedOptimizer,
    groups: dict[str, dict[str, Knobs]],
    keys: Mapping[tuple[str, str], list[str]],
    value: Callable[[str], Any],  # Any: a tensor (safetensors) or a JSON value, by flat key
) -> StateDict:
    """A standard state dict for `opt` (over all or some of a model's parameters) from a saved
    one found by name: each of opt's groups takes the hyperparameters of the saved group that
    held its first parameter, each parameter its buffers (`value` of its flat keys); none for
    a parameter never stepped, as in a single process."""
    rules = {g["rule"] for g in opt.param_groups}
    if not rules <= set(groups):
        raise _other_parts(groups, rules)
    state: dict[int, dict[str, Any]] = {}  # Any: torch's optimizer state entries
    param_groups, index = [], 0
    for g in opt.param_groups:
        saved = groups[g["rule"]]
        names = [opt.param_names[id(p)] for p in g["params"]]
        if any(n not in saved for n in names):
            raise _other_params()
        ids = list(range(index, index + len(names)))
        index += len(names)
        param_groups.append({**saved[names[0]], "rule": g["rule"], "params": ids})
        for i, name in zip(ids, names, strict=True):
            for key in keys.get((g["rule"], name), []):
                state.setdefault(i, {})[key.rsplit(".", 1)[1]] = value(key)
    return {"state": state, "param_groups": param_groups}


def load_optimizer_state(opt: CombinedOptimizer, state: StateDict, ckpt: Path) -> None:
    """`opt.load_state_dict(state)`, a state it refuses (e.g. saved for weights of the other
    orientation) being a CheckpointError that names the checkpoint."""
    try:
        opt.load_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {ckpt}: {exc}") from None


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
        return [ckpt / s for s in read_optimizer_index(ckpt)["shards"]]
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{ckpt} has no readable optimizer state ({exc}); resume from an earlier checkpoint"
        ) from None


def optimizer_state_by_name(opt: CombinedOptimizer, ckpt: Path) -> StateDict:
    """A state dict for `opt` (a CombinedOptimizer over all or some of a model's parameters),
    assembled by parameter name from a checkpoint's optimizer file or shards, reading only the
    tensors `opt` needs."""
    with contextlib.ExitStack() as stack:
        saved: dict[str, list[Knobs]] = {}
        keys: dict[tuple[str, str], list[str]] = {}
        # flat key -> how to read its value; Any: as `_state_for`'s `value`
        readers: dict[str, Callable[[str], Any]] = {}
        for path in optimizer_files(ckpt):
            fh, groups, extra, tensor_keys = _open_optimizer_file(stack, path)
            for rule, rule_groups in groups.items():
                saved.setdefault(rule, []).extend(rule_groups)
            for where, found in _keys_by_param([*tensor_keys, *extra]).items():
                keys[where] = found
            # safetensors leaves safe_open.get_tensor unannotated
            readers.update(dict.fromkeys(tensor_keys, fh.get_tensor))
            readers.update({k: extra.__getitem__ for k in extra})
        return _state_for(opt, _groups_by_name(saved), keys, lambda k: readers[k](k))


def _open_optimizer_file(
    stack: contextlib.ExitStack[bool | None], path: Path
) -> tuple[safe_open, dict[str, list[Knobs]], JsonObject, list[str]]:  # JsonObject: `extra`
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


def _other_parts(saved: Iterable[str], rules: Iterable[str]) -> CheckpointError:
    """The error for a checkpoint whose optimizer parts are not the ones this run needs."""
    return CheckpointError(
        f"checkpoint optimizer has parts {sorted(saved)}, this run needs {sorted(rules)}: "
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
