"""Small file helpers: atomic writes (temp file in the same folder, fsync, rename) and JSON lines."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


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


def dumps(obj: object, **kwargs: Any) -> str:
    """Strict JSON text of `obj` (non-finite floats as null)."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


def write_json(path: str | Path, obj: object) -> None:
    atomic_write_text(path, dumps(obj, indent=2) + "\n")


class JsonlError(ValueError):
    """A damaged line of a JSON-lines file (the message names the file and the line)."""


def read_jsonl(path: str | Path, key: str | None = None) -> list[dict[str, Any]]:
    """Records (JSON objects, each with an integer `key` when one is named) of a JSON-lines file.
    An unterminated last line that does not parse (an append cut short) is dropped; any other
    damaged line is a JsonlError, never a silent truncation."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    out: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not an object")
            if key is not None and (type(record.get(key)) is not int):
                raise ValueError(f"no integer {key!r}")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if number == len(lines):  # no newline after it: a torn append
                break
            raise JsonlError(f"{path} line {number} is damaged ({exc})") from None
        out.append(record)
    return out


def append_jsonl(path: str | Path, obj: object) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(dumps(obj) + "\n")
