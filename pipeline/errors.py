"""User-facing errors: one line, ``file:row: reason``, never a traceback."""

from __future__ import annotations


class CrowdsegError(Exception):
    """An error caused by the user's input or settings, reported as one line."""

    def __init__(self, reason: str, *, file: str | None = None, where: str | int | None = None):
        self.reason = reason
        self.file = file
        self.where = where
        super().__init__(self.line())

    def line(self) -> str:
        """``file:row: reason`` on one line (a reason quoted from a parser may span several: they are joined)."""
        reason = " ".join(self.reason.split())
        parts = [p for p in (self.file, None if self.where is None else str(self.where)) if p]
        return ":".join([*parts, f" {reason}"]) if parts else reason
