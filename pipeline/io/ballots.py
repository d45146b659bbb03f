"""Prepared photos (``merge.Prepared``: rasterised, swaps decided, tallied) kept in a build's work directory.

The scoring pass prepares every photo and keeps it here; the final vote, a later build's re-vote with new weights or
a new quorum, and any further EM pass read it back instead of rasterising again. One file per photo, named by its
ballot key (``incremental.ballot_keys``): the pickle deflated with run-length matching (zlib-ng's ``Z_RLE``), which
suits the tallies' label windows (~14 KB a photo for the 20,000-photo benchmark crowd). Files are written
atomically, so a build killed half-way leaves whole files or none.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass
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
    """The prepared photos of a batch: where they live, and each photo's ballot key."""

    folder: Path
    keys: dict[str, str]  # photo id -> ballot key

    def path(self, photo_id: str) -> Path:
        return self.folder / f"{self.keys[photo_id]}{SUFFIX}"

    def missing(self, photo_ids: Iterable[str]) -> set[str]:
        """The photos without a prepared file."""
        return {p for p in photo_ids if not self.path(p).exists()}

    def load(self, photo_id: str) -> Any | None:
        """The photo's prepared form, or None when it has none."""
        try:
            data = self.path(photo_id).read_bytes()
        except FileNotFoundError:
            return None
        return decode(data, self.path(photo_id))

    def save(self, photo_id: str, prepared: Any) -> None:
        write_atomic(self.path(photo_id), encode(prepared))
