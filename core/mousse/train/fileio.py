"""Small file helpers: atomic writes (temp file in the same folder, fsync, rename) and JSON lines."""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import tempfile
import types
from functools import cache
from pathlib import Path
from typing import (
    Any,
    Literal,
    TypeGuard,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

_T = TypeVar("_T")

# A JSON object by key whose keys no TypedDict can declare (torch's optimizer state, a user's
# values). Any: each key holds its own JSON type (json's own typing). Every record of our own
# has a TypedDict instead, checked on read by `shaped`.
JsonObject = dict[str, Any]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new file, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp's 0600 would hide runs from teammates
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict(obj: object) -> object:
    """`obj` with every non-finite float (NaN, inf) as None: strict JSON, which every parser
    reads (a diverged run says so in its status)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: object, indent: int | None = None) -> str:
    """Strict JSON text of `obj` (non-finite floats as null), on one line or indented."""
    return json.dumps(strict(obj), allow_nan=False, indent=indent)


def write_json(path: str | Path, obj: object) -> None:
    atomic_write_text(path, dumps(obj, indent=2) + "\n")


def read_bytes(path: str | Path) -> bytes:
    """The bytes of the regular file `path`: anything else (a FIFO, which would block the
    reader forever; a device, which never ends) is an OSError naming it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO: no wait for a writer
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file; replace it with one", str(path))
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def read_text(path: str | Path) -> str:
    """The UTF-8 text of the regular file `path` (UnicodeDecodeError, a ValueError, if not)."""
    return read_bytes(path).decode("utf-8")


def loads(text: str | bytes) -> Any:  # Any: json.loads is typed so, the value checked by callers
    """json.loads, with JSON nested too deeply for Python's recursion limit a ValueError like
    any other malformed JSON (not a RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_json(path: str | Path) -> Any:  # Any: as `loads`
    """The JSON value in the regular file `path`; malformed or not UTF-8: ValueError."""
    return loads(read_bytes(path))


def shaped(value: object, form: type[_T]) -> TypeGuard[_T]:
    """Whether the JSON `value` has the shape the TypedDict `form` declares: its required keys,
    and every declared key it has of the declared type, nested forms and lists included (a key
    `form` does not declare is let be: a later version may write more)."""
    return _fits(value, form)


@cache
def _declared(form: type) -> tuple[frozenset[str], dict[str, object]]:
    """A TypedDict's required keys and every key's type."""
    return frozenset(getattr(form, "__required_keys__", ())), get_type_hints(form)


def _fits(value: object, hint: object) -> bool:
    """Whether `value` (parsed JSON) is of the type `hint` (an annotation of a JSON shape)."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    if hint is int or hint is float:  # JSON has numbers: an int is a float, a bool neither
        numbers = (int, float) if hint is float else (int,)
        return isinstance(value, numbers) and not isinstance(value, bool)
    if isinstance(hint, type) and is_typeddict(hint):
        required, keys = _declared(hint)
        return (
            isinstance(value, dict)
            and required <= value.keys()
            and all(_fits(value[k], t) for k, t in keys.items() if k in value)
        )
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union or origin is types.UnionType:
        return any(_fits(value, t) for t in args)
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and _fits(v, args[1]) for k, v in value.items()
        )
    return isinstance(hint, type) and isinstance(value, hint)  # str, bool


class JsonlError(ValueError):
    """A damaged line of a JSON-lines file (the message names the file and the line)."""


def read_jsonl(path: str | Path, form: type[_T], key: str | None = None) -> list[_T]:
    """Records of a JSON-lines file, each a JSON object of the TypedDict `form`'s shape
    (`shaped`; first, an integer `key` when one is named). An unterminated last line that does
    not parse (an append cut short) is dropped; any other damaged line is a JsonlError, never a
    silent truncation."""
    path = Path(path)
    if not path.exists():
        return []
    lines = read_bytes(path).split(b"\n")
    out: list[_T] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = loads(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not an object")
            if key is not None and (type(record.get(key)) is not int):
                raise ValueError(f"no integer {key!r}")
            if not shaped(record, form):
                raise ValueError("a value of another type than mousse writes")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if number == len(lines):  # no newline after it: a torn append
                break
            raise JsonlError(f"{path} line {number} is damaged ({exc})") from None
        out.append(record)
    return out


def append_jsonl(path: str | Path, obj: object) -> None:
    """Append `obj` as one JSON line; a write that fails (a full disk) names the file."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(dumps(obj) + "\n")
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None
