"""Where guest console bytes go: echoed to a stream as they come, and kept (bounded) for the summary."""

from __future__ import annotations

import threading
from typing import BinaryIO

DEFAULT_CAPTURE_LIMIT = 1 << 20


class Console:
    """A sink for the guest's console output, shared by the serial port and the debug console.

    A guest that floods the console cannot exhaust memory: past ``capture_limit`` bytes the output is
    counted in ``dropped`` instead of kept (and no longer echoed).
    """

    def __init__(self, echo: BinaryIO | None = None, capture_limit: int = DEFAULT_CAPTURE_LIMIT) -> None:
        self.echo = echo
        self.capture_limit = capture_limit
        self.dropped = 0
        self._buf = bytearray()
        self._lock = threading.Lock()

    def put(self, data: bytes) -> None:
        """Append guest output (thread-safe: vCPUs print concurrently)."""
        with self._lock:
            room = self.capture_limit - len(self._buf)
            if room < len(data):
                self.dropped += len(data) - max(room, 0)
                data = data[:max(room, 0)]
            if not data:
                return
            self._buf += data
            if self.echo is not None:
                self.echo.write(data)
                if b"\n" in data:
                    self.echo.flush()

    def flush(self) -> None:
        """Flush the echo stream."""
        if self.echo is not None:
            with self._lock:
                self.echo.flush()

    @property
    def output(self) -> bytes:
        """Everything captured so far."""
        with self._lock:
            return bytes(self._buf)

    def text(self) -> str:
        """The captured output decoded as text (undecodable bytes replaced)."""
        return self.output.decode("utf-8", errors="replace")
