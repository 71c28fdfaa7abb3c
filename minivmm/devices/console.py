"""Where guest console bytes go: echoed to a stream as they come, and kept (bounded) for the summary.

The echo never blocks a vCPU: :class:`ConsoleWriter` writes to the output file descriptor from its own
thread, and a vCPU only appends to its bounded backlog. When the reader stalls (a pipe nobody reads),
the backlog fills and further output is dropped and counted, while the vCPUs, ``--timeout`` and the
stop signals carry on. When the reader goes away (EPIPE: ``minivmm boot ... | head -c 5``), the echo
stops quietly; the run itself goes on to its end.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from typing import Protocol

from minivmm.threads import DaemonThread

DEFAULT_CAPTURE_LIMIT = 1 << 20
#: How many bytes may wait for a slow reader before the echo drops output (a pipe holds 64 KiB more).
DEFAULT_ECHO_BACKLOG = 1 << 16


class EchoSink(Protocol):
    """Where the console echoes: ``write`` must not block for long (a ConsoleWriter, or a BytesIO in tests)."""

    def write(self, data: bytes, /) -> object: ...
    def flush(self) -> None: ...


class ConsoleWriter:
    """Writes to ``fd`` from its own thread; :meth:`write` never blocks.

    Past ``backlog`` bytes waiting, written data is dropped and counted in ``dropped``. EPIPE (the
    reader closed the pipe) stops the writer quietly and sets ``broken``; later writes are discarded.
    Any other write error (ENOSPC on ``> /dev/full``, EIO) stops it the same way and is kept in
    ``error``, for the command to report: output the user asked for was lost.
    """

    def __init__(self, fd: int, backlog: int = DEFAULT_ECHO_BACKLOG) -> None:
        self.fd = fd
        self.backlog = backlog
        self.dropped = 0
        self.broken = False
        self.error: OSError | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._pending = 0
        self._closing = False
        self._cond = threading.Condition()
        self._thread = DaemonThread(self._run, name="console-writer")
        self._thread.start()

    def write(self, data: bytes, *, keep: bool = False) -> None:
        """Queue ``data``; ``keep`` queues it even past the backlog (the run's summary: small, and last)."""
        with self._cond:
            if self.broken or not data:
                return
            if not keep and self._pending + len(data) > self.backlog:
                self.dropped += len(data)
                return
            self._chunks.append(data)
            self._pending += len(data)
            self._cond.notify()

    def flush(self) -> None:
        """Nothing to do: the writer thread writes as soon as it can."""

    def _run(self) -> None:
        # Stop signals belong to the main thread; this thread may sit in write() for as long as the
        # reader stalls.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while True:
            with self._cond:
                while not self._chunks and not self._closing:
                    self._cond.wait()
                if not self._chunks:
                    return
                data = self._chunks.popleft()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError as e:  # EPIPE (the reader left: quietly), ENOSPC, EIO ...: stop echoing
                with self._cond:
                    if not isinstance(e, BrokenPipeError):
                        self.error = e
                    self.broken = True
                    self._chunks.clear()
                    self._pending = 0
                return
            with self._cond:
                self._pending -= len(data)

    def close(self, timeout: float) -> bool:
        """Write what is queued, waiting at most ``timeout`` seconds; return whether all of it was written.

        A reader that has not drained the pipe by then is abandoned: the thread is a daemon, blocked in
        write(), and ends with the process.
        """
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive() and not self.broken


class Console:
    """A sink for the guest's console output, shared by the serial port and the debug console.

    A guest that floods the console cannot exhaust memory: past ``capture_limit`` bytes the output is
    counted in ``dropped`` instead of kept (and no longer echoed).
    """

    def __init__(self, echo: EchoSink | None = None, capture_limit: int = DEFAULT_CAPTURE_LIMIT) -> None:
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

    @property
    def echo_dropped(self) -> int:
        """Bytes the echo dropped because its reader stalled (0 without a ConsoleWriter)."""
        return self.echo.dropped if isinstance(self.echo, ConsoleWriter) else 0

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
