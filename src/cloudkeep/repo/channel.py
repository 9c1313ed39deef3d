"""Length-prefixed pickles between cloudkeep and a worker process it started (``procpool.spawn``).

Its own module so that a worker imports only what it uses: the walk-ahead process (``procwalk``)
needs the channel, not the chunker and ciphers ``procworker`` brings. Runs on the machines'
Python (3.9+).
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

_LENGTH = struct.Struct("<I")


class Channel:
    """Length-prefixed pickles over two pipe descriptors (a parent and the child it started)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd

    def send(self, message: tuple[Any, ...], payload: memoryview | None = None) -> None:
        """Send ``message``, then ``payload``'s bytes as they are (the receiver knows their length
        from the message and takes them with ``recv_into``): no pickled copy of a large buffer."""
        body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(_LENGTH.pack(len(body)) + body)
        while view:
            view = view[os.write(self.write_fd, view) :]
        while payload:
            payload = payload[os.write(self.write_fd, payload) :]

    def recv(self) -> tuple[Any, ...]:
        """The next message; ``EOFError`` when the other side is gone."""
        (length,) = _LENGTH.unpack(self._exactly(_LENGTH.size))
        message: tuple[Any, ...] = pickle.loads(self._exactly(length))
        return message

    def recv_into(self, buffer: memoryview) -> None:
        """Fill ``buffer`` with the payload that followed the last message."""
        while buffer:
            got = os.readv(self.read_fd, [buffer])
            if not got:
                raise EOFError("the other end of the worker channel closed")
            buffer = buffer[got:]

    def _exactly(self, size: int) -> bytes:
        parts, have = [], 0
        while have < size:
            part = os.read(self.read_fd, size - have)
            if not part:
                raise EOFError("the other end of the worker channel closed")
            parts.append(part)
            have += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)
