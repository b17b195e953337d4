"""Writing files so that a kill at any moment leaves the old file or the new one, never half of one.

Every file the library writes for a user (checkpoints, model folders, feature-cache shards, JSON
results) goes through `atomic_write`: the bytes go to a temporary file beside the target, are
flushed to disk, and replace the target in one rename. JSON is written strictly: a non-finite
number is an error that names the file and the key, never a bare NaN in a file that JSON readers
then refuse.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

TEMPORARY_SUFFIX = ".tmp"


def temporary_path(path: Path) -> Path:
    """Where `atomic_write` puts the new bytes of `path` before the rename."""
    return path.with_name(path.name + TEMPORARY_SUFFIX)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """write(temporary) fills a temporary file beside `path`, which then replaces `path` at once.

    The temporary file is flushed to disk before the rename (so a power cut cannot leave an empty
    file under the final name) and removed if `write` fails."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda temporary: temporary.write_text(text))


class NonFiniteValueError(ValueError):
    """A value that was about to be written is NaN or infinite; the message names where."""


def finite_for_json(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """`value` with every NaN or infinite float replaced by None, and the keys (dotted, with [i]
    for list items) of the values replaced: for JSON that any reader accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [where or "(the value)"]
    if isinstance(value, dict):
        out, replaced = {}, []
        for key, item in value.items():
            out[key], inner = finite_for_json(item, f"{where}.{key}" if where else str(key))
            replaced += inner
        return out, replaced
    if isinstance(value, (list, tuple)):
        out, replaced = [], []
        for index, item in enumerate(value):
            clean, inner = finite_for_json(item, f"{where}[{index}]")
            out.append(clean)
            replaced += inner
        return out, replaced
    return value, []


def json_text(value: Any, path: str | Path = "", **dumps: Any) -> str:
    """json.dumps that refuses NaN and infinities with a message naming the file and the key."""
    _, found = finite_for_json(value)
    if found:
        raise NonFiniteValueError(f"{path}: refusing to write a non-finite number at {found[0]}")
    return json.dumps(value, allow_nan=False, **dumps)


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> None:
    """Strict JSON (json_text), written atomically."""
    atomic_write_text(path, json_text(value, path, indent=indent) + "\n")
