"""Prepared photos (``merge.Prepared``: rasterised, swaps decided, tallied) kept in a build's work directory.

The scoring pass prepares every photo and keeps it here; the final vote, a later build's re-vote with new weights or
a new quorum, and any further EM pass read it back instead of rasterising again. One file per photo, named by its
ballot key (``incremental.ballot_keys``): the pickle deflated with run-length matching (zlib-ng's ``Z_RLE``), which
suits the tallies' label windows (~14 KB a photo for the 20,000-photo benchmark crowd). Files are written
atomically, so a build killed half-way leaves whole files or none.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zlib_ng import zlib_ng

from pipeline.store import write_atomic

SUFFIX = ".ballot"


def encode(prepared: Any) -> bytes:
    """The file bytes of a prepared photo."""
    deflate = zlib_ng.compressobj(1, zlib_ng.DEFLATED, 15, 8, zlib_ng.Z_RLE)
    return deflate.compress(pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL)) + deflate.flush()


def decode(data: bytes, path: Path) -> Any:
    """A prepared photo from ``encode``'s bytes (those of ``path``, named in the error)."""
    try:
        return pickle.loads(zlib_ng.decompress(data))
    except (zlib_ng.error, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a readable prepared photo ({e}); delete it and the build makes it "
                         "again") from None


@dataclass(frozen=True)
class Ballots:
    """The prepared photos of a batch: where they live, each photo's ballot key, and (``found``) which exist."""

    folder: Path
    keys: dict[str, str]  # photo id -> ballot key
    present: frozenset[str] = frozenset()  # the photos ``found`` found a file for

    def path(self, photo_id: str) -> Path:
        return self.folder / f"{self.keys[photo_id]}{SUFFIX}"

    def found(self) -> Ballots:
        """These ballots, with ``present`` the photos that have a file now."""
        return replace(self, present=frozenset(p for p in self.keys if self.path(p).exists()))

    def load(self, photo_id: str) -> Any | None:
        """The photo's prepared form when ``found`` found it, else None. A file gone since is an error, not a photo
        to prepare again: its caller read no shapes for it."""
        return decode(self.path(photo_id).read_bytes(), self.path(photo_id)) if photo_id in self.present else None

    def save(self, photo_id: str, prepared: Any) -> None:
        write_atomic(self.path(photo_id), encode(prepared))
