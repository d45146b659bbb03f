"""Content-keyed results in a build's work directory.

A key is a hash of what a result depends on: its inputs' content, the config section it reads and the code version.
Results are written atomically (a temporary file, then a rename), so a build killed at any point leaves only whole
results behind, and the next build reuses them and computes the rest.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import xxhash

PACKAGE = Path(__file__).resolve().parent


@cache
def code_version(module: str) -> str:
    """A hash of a module's source and of every ``pipeline`` module it imports, directly or not: a code change
    gives new keys to the stages it can affect, and only to those."""
    digest = hashlib.sha256()
    for name in sorted(_closure(module)):
        digest.update(name.encode() + b"\0" + _source(name).encode() + b"\0")
    return digest.hexdigest()[:16]


@cache
def _source(module: str) -> str:
    path = PACKAGE.parent / Path(*module.split("."))
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text(encoding="utf-8")


def _closure(module: str) -> set[str]:
    """``module`` and the ``pipeline`` modules it imports anywhere in its source, transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _imports(name)
    return seen


@cache
def _imports(module: str) -> list[str]:
    """The ``pipeline`` modules that ``module`` imports anywhere in its source."""
    found = []
    for node in ast.walk(ast.parse(_source(module))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                      if _exists(f"{node.module}.{a.name}")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("pipeline")]
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent / Path(*module.split("."))
    return path.is_dir() or path.with_suffix(".py").exists()


def _plain(value: Any) -> Any:
    """JSON-ready form of keys' parts: arrays as lists, anything else by its text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def key_of(stage: str, *parts: Any) -> str:
    """A key of ``stage``'s result computed from ``parts`` (JSON-able, arrays allowed): include the code_version of
    the code that computes it."""
    text = json.dumps([stage, *parts], sort_keys=True, default=_plain, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def rows_key(df: pd.DataFrame) -> list[str]:
    """One short content hash per row of ``df`` (every column, in order; values by type and text)."""
    if df.empty:
        return []
    hashed = pd.util.hash_pandas_object(df.astype(str), index=False, categorize=False)
    return [format(int(v), "016x") for v in hashed.to_numpy()]


@contextmanager
def _atomic(path: Path) -> Iterator[BinaryIO]:
    """A file to write ``path`` through: readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with _atomic(path) as f:
        f.write(data)


def save(obj: Any, path: Path) -> Path:
    """Pickle ``obj`` to ``path`` atomically, streamed (no second copy in memory); returns the path."""
    with _atomic(path) as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load(path: str | Path) -> Any:
    """A result written by ``save``."""
    with open(path, "rb") as f:
        return pickle.load(f)


def save_part(result: Any, items: Sequence[str], part: Path) -> Path:
    """Save a batch's result, then the list of its items' keys beside it (``<part>.keys``): an item is reusable
    once both exist, so a batch killed half-way is never half-reused."""
    save(result, part)
    write_atomic(part.with_suffix(".keys"), json.dumps(list(items)).encode())
    return part


def known_items(folder: Path) -> dict[str, str]:
    """Item key -> the saved batch result holding it, over every complete batch in ``folder``."""
    out: dict[str, str] = {}
    for keys in sorted(folder.glob("*.keys")) if folder.exists() else []:
        part = keys.with_suffix(".pkl")
        if part.exists():
            out.update(dict.fromkeys(json.loads(keys.read_bytes()), str(part)))
    return out


class Spans:
    """Reads byte ranges of files, each file opened once (a context manager closes them)."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def __enter__(self) -> Spans:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def read(self, path: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``path`` from ``offset``."""
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY)
        data = os.pread(self.fds[path], length, offset)
        if len(data) != length:
            raise OSError(f"{path}: {length} bytes expected at {offset}, found {len(data)}")
        return data


class FileDigests:
    """xxh3-128 digests of input files (a content key, not a seal: 10x cheaper than sha256 on 20k photos),
    remembered by (path, size, mtime, inode) so an unchanged file is not read again (the way git's index avoids
    rehashing). Missing or unreadable files get an empty digest."""

    COLUMNS = ("path", "size", "mtime_ns", "inode", "xxh3")

    def __init__(self, cache_path: Path):
        self.cache_path = cache_path
        self.known: dict[tuple[str, int, int, int], str] = {}
        table = pd.read_parquet(cache_path) if cache_path.exists() else pd.DataFrame()
        if set(self.COLUMNS) <= set(table.columns):  # a cache of another digest is not used
            self.known = {(p, int(s), int(m), int(i)): h for p, s, m, i, h in table[list(self.COLUMNS)].itertuples(
                index=False)}

    def digests(self, paths: Iterable[str], workers: int = 4) -> list[str]:
        """The digest of each path, hashing only files whose stat changed (in ``workers`` threads)."""
        paths = list(paths)
        stats = [_stat(p) for p in paths]
        todo = sorted({(p, s) for p, s in zip(paths, stats, strict=True) if s and (p, *s) not in self.known})
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for (p, s), h in zip(todo, pool.map(lambda t: _xxh3(t[0]), todo), strict=True):
                if h:
                    self.known[(p, *s)] = h
        return [self.known.get((p, *s), "") if s else "" for p, s in zip(paths, stats, strict=True)]

    def unchanged(self, path: str) -> bool:
        """Whether ``path`` is a file remembered with its current size, mtime and inode: a build that ended well
        read it as it is now."""
        st = _stat(path)
        return st is not None and (path, *st) in self.known

    def save(self, keep: Iterable[str]) -> None:
        """Remember the digests of the files in ``keep`` (the others are forgotten)."""
        wanted = set(keep)
        rows = [(*k, h) for k, h in sorted(self.known.items()) if k[0] in wanted]
        table = pd.DataFrame(rows, columns=list(self.COLUMNS))
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(".tmp")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, self.cache_path)


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino) if os.path.isfile(path) else None


def _xxh3(path: str) -> str:
    digest = xxhash.xxh3_128()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return ""
    return digest.hexdigest()


def prune(folders: Iterable[Path], keep: set[str]) -> int:
    """Delete the entries of ``folders`` whose name (before the first dot) is not in ``keep``, temporary files a
    killed build left included; returns how many."""
    gone = 0
    for folder in folders:
        for entry in folder.iterdir() if folder.is_dir() else []:
            if entry.name.split(".")[0] not in keep:
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                gone += 1
    return gone


def remove_soon(folder: Path | None) -> threading.Thread | None:
    """Start deleting ``folder`` (if any) in a thread of its own, which file deletions let run beside Python work;
    join it before the folder must be gone."""
    if folder is None:
        return None
    thread = threading.Thread(target=shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True},
                              name="crowdseg-remove")
    thread.start()
    return thread
