"""Reading a file a command was given (`-` for stdin), bounded: a model or a log handed to
the CLI may be hostile or simply huge, and must end in a clear error, not in swap."""

from __future__ import annotations

import sys
from pathlib import Path

MAX_INPUT = 32 * 1024 * 1024


class InputTooLarge(OSError):
    pass


def read_input(path: str, limit: int = MAX_INPUT) -> str:
    """The text of `path` ('-': stdin); InputTooLarge past `limit` bytes, OSError or
    UnicodeDecodeError when it cannot be read."""
    if path == "-":
        stream = getattr(sys.stdin, "buffer", None)  # a text-only stdin (tests, embedding): read text
        data = stream.read(limit + 1) if stream is not None else sys.stdin.read(limit + 1).encode()
    else:
        with Path(path).open("rb") as f:
            data = f.read(limit + 1)
    if len(data) > limit:
        raise InputTooLarge(f"{path} is larger than {limit} bytes")
    return data.decode("utf-8")
