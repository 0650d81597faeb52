"""Atomic outputs, Parquet with schema checks, JSON manifests and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gpr.core.errors import GprInputError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove the temp dirs that dead processes left beside `out` (killed by SIGKILL or a power
    cut, nothing could clean up); returns what was removed."""
    gone = []
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        pid = p.name[len(f".{out.name}.tmp-") :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


def check_out(
    out: str | Path, inputs: Sequence[str | Path] = (), overwrite: bool = False, kind: str = "dir"
) -> None:
    """Before any work: refuse an `out` that is an input; a directory output (`kind="dir"`, which
    replaces the whole folder) that lies inside an input or holds one, or exists non-empty without
    `overwrite`; a file output (`kind="file"`) that is a directory; and an unwritable place."""
    out = Path(out).resolve()
    for i in inputs:
        src = Path(i).resolve()
        if out == src or (kind == "dir" and (src in out.parents or out in src.parents)):
            raise GprInputError(f"--out would write over the input {i}", file=out, field="out")
    if kind == "file":
        if out.is_dir():
            raise GprInputError("--out is a directory; give a file path", file=out, field="out")
    elif not overwrite and (out.is_file() or (out.is_dir() and any(out.iterdir()))):
        raise GprInputError("exists and is not empty; pass --overwrite", file=out, field="out")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    try:  # a real probe: permission bits say nothing to root, nor on /proc or read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".gpr-write-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise GprInputError(f"cannot write here ({e.strerror})", file=parent, field="out") from None


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success it replaces `out`, on error it is removed.
    Temp dirs are named with the pid, so the ones of dead processes are removed on the next run."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise GprInputError("output exists; pass --overwrite", file=out)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file through a temp file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise GprInputError("file not found", file=path)
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GprInputError(f"invalid JSON: {e.msg}", file=path, row=e.lineno) from None
    if not isinstance(obj, dict):
        raise GprInputError("expected a JSON object", file=path)
    return obj


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file as torch tensors (never a pickle); a missing, truncated or foreign file
    is one GprInputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise GprInputError("file not found", file=path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise GprInputError(f"not a readable safetensors file ({e})", file=path) from None


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_parquet(path: str | Path, table: pa.Table) -> None:
    """Deterministic Parquet: fixed compression, no statistics that vary between runs."""
    pq.write_table(table, str(path), compression="zstd", row_group_size=1 << 20)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(paths: list[Path]) -> str:
    """One hash over several files, in the given order (names included)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()
