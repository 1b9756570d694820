"""TOML in and out: stdlib tomllib (tomli on 3.10) for reading, a small writer for our own files
(flat tables of scalars and lists, nested tables and arrays of tables)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .fileio import read_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


# Any: tomllib.loads is typed so, each value checked by its reader (config.coerce_toml)
def loads(text: str) -> dict[str, Any]:
    """The TOML document `text`; nested too deeply for Python's recursion limit: a
    TOMLDecodeError like any other malformed TOML."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except RecursionError:
        raise TOMLDecodeError("TOML nested too deeply") from None
    return data


def load(path: str | Path) -> dict[str, Any]:  # Any: as `loads`
    """The TOML file `path` (a regular file: `fileio.read_text`)."""
    return loads(read_text(path))


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dumps(data: Mapping[str, object], _prefix: str = "") -> str:
    """TOML text for `data`; None values are left out (TOML has no null)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, object]]] = []
    arrays: list[tuple[str, list[dict[str, object]]]] = []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{_prefix}{_toml_key(k)}"
        out += f"\n[{name}]\n" + dumps(v, name + ".")
    for k, items in arrays:
        name = f"{_prefix}{_toml_key(k)}"
        for item in items:
            out += f"\n[[{name}]]\n" + dumps(item, name + ".")
    return out
