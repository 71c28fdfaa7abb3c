"""Every file a user names, read and written under one set of rules and refused in one wording.

minivmm runs as root, so a path given on the command line may name anything: a device, a FIFO, a
socket, a directory, a symbolic link planted by the program being traced. This module is the only
place that opens such a path.

Reading (:func:`read_bytes`, :func:`read_text`, :func:`read_json`): regular files only. The path is
opened ``O_RDONLY | O_NONBLOCK`` (a FIFO cannot block the open) and the open file is ``fstat``-ed, so
what is checked is what is read: no stat-then-open race. (It is also ``stat``-ed before the open, so
a device is refused without being opened: opening some devices has effects.) A symbolic link is
followed when reading, since reading through it writes nothing; what it reaches must be a regular
file. Every read is bounded, by the size limit of its kind of file, even if the file grows while it
is read:

======================================================  ============================================
kind of file                                            at most
======================================================  ============================================
guest image (``boot IMAGE``)                            the RAM it must fit in (3 GiB at the most)
sequence file (``--sequence FILE``)                     :data:`SEQUENCE_FILE_MAX` (1 MiB)
host profile (``--profile FILE``)                       :data:`PROFILE_MAX` (1 MiB)
JSON document (``compare FILE``, ``--baseline FILE``)   :data:`DOCUMENT_MAX` (256 MiB)
======================================================  ============================================

An empty file is refused too (none of these is ever empty), and JSON is nested at most
:data:`JSON_MAX_DEPTH` levels (checked before it is parsed: no RecursionError).

Writing (:class:`Output`): the name must be absent or a regular file; anything else that exists (a
device, a FIFO, a socket, a directory, a symbolic link, dangling or not) is refused, both when the
output is checked (before the work, which may take minutes) and again when it is written (the name
may have changed meanwhile: a symbolic link planted during a run is refused then, never followed).
The data goes to an unpredictable temporary name beside the target, created ``O_CREAT | O_EXCL |
O_NOFOLLOW``, is flushed and fsynced, and is then renamed over the target: ``rename(2)`` replaces a
name and never follows a link. A failed write (a full disk: ENOSPC, EDQUOT, EFBIG, EIO) or a SIGINT or
SIGTERM that comes during it leaves the old file as it was and no temporary file behind (the two
signals are held back while the file is written and checked for before the rename). ``-``,
``/dev/stdout`` and ``/dev/stderr`` are not files: they name that stream, and are written to it.

Errors: :class:`FileRefused` (the path cannot be used as named: bad input) and :class:`WriteFailed`
(the disk or the stream failed), each with a one-line message ``WHAT 'PATH' REASON``. Running out
of file descriptors or memory is not the file's fault: those ``OSError``s pass through unchanged for
the command line to report as such.

Standard library only, cheap to import: the command line imports it at start-up.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); mypy knows the name
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO, TextIO

#: The largest sequence file read (a real VMM's set-up is a few hundred lines; a trace of QEMU ~ 10 KB).
SEQUENCE_FILE_MAX = 1 << 20
#: The largest host profile read (its quantile lists hold a few thousand integers: ~50 KB).
PROFILE_MAX = 1 << 20
#: The largest JSON document read: larger than any timing document (``timing --json`` keeps every
#: sample: 100,000 repetitions of a 20-step sequence is ~30 MB); a bigger file is not one of ours.
DOCUMENT_MAX = 256 << 20
#: The deepest JSON nesting read (minivmm's documents nest 5 levels).
JSON_MAX_DEPTH = 64

#: errnos that mean the process or the system ran out of something: not the file's fault, so they are
#: raised as they are, for the command line to name the limit.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})

#: Names that are streams, not files (the convention of ``-o`` in many tools).
STREAMS = {"-": "stdout", "/dev/stdout": "stdout", "/dev/stderr": "stderr"}

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class FileRefused(Exception):
    """A path that cannot be used as named (bad input): ``WHAT 'PATH' REASON`` on one line.

    ``missing`` is True when nothing exists at the path (a caller may say what else it could have
    meant, e.g. a sequence name)."""

    def __init__(self, what: str, path: str, reason: str, *, missing: bool = False) -> None:
        super().__init__(f"{what} {path!r} {reason}")
        self.what = what
        self.path = path
        self.missing = missing


class WriteFailed(Exception):
    """An output the disk or the stream could not take (ENOSPC, EDQUOT, EFBIG, EIO ...): one line.
    Nothing half-written is left: the old file, if any, is as it was."""

    def __init__(self, what: str, path: str, err: OSError) -> None:
        name = errno.errorcode.get(err.errno or 0, "")
        detail = f"{err.strerror or err}" + (f" ({name})" if name else "")
        where = "standard output" if STREAMS.get(path) == "stdout" else (
            "standard error" if STREAMS.get(path) == "stderr" else f"{what} {path!r}")
        kept = "" if path in STREAMS else " (an existing file is left as it was)"
        super().__init__(f"{where} could not be written: {detail}{kept}")
        self.errno = err.errno


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words: ``a FIFO``, ``a character device`` ..."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


# --- reading ---------------------------------------------------------------------------------------

def read_bytes(path: str, what: str, limit: int, too_large: str | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    ``what`` names the file in every message (the option or the kind of file: ``--baseline``,
    ``image``). ``too_large`` says, after "is N bytes:", why a larger file cannot be used (default:
    the limit in bytes). FileRefused for anything else than a non-empty regular file within the
    limit."""
    if not path:
        raise FileRefused(what, path, "is an empty file name")
    try:
        st = os.stat(path)  # not authoritative (see fstat below): refuses a device without opening it
    except FileNotFoundError:
        raise FileRefused(what, path, "does not exist", missing=True) from None
    except OSError as e:
        raise _refusal(what, path, "cannot be read", e) from None
    _refuse_unless_regular(what, path, st.st_mode)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileRefused(what, path, "does not exist", missing=True) from None
    except OSError as e:
        raise _refusal(what, path, "cannot be read", e) from None
    try:
        st = os.fstat(fd)  # the object actually opened: this is the check that counts
        _refuse_unless_regular(what, path, st.st_mode)
        if st.st_size > limit:
            raise FileRefused(what, path, f"is {st.st_size} bytes: {too_large or f'the limit is {limit}'}")
        chunks = []
        left = limit + 1  # the file may grow after fstat(): read no more than this
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise _refusal(what, path, "cannot be read", e) from None
    finally:
        os.close(fd)
    if left <= 0:
        raise FileRefused(what, path, f"grew while it was read: {too_large or f'the limit is {limit} bytes'}")
    data = b"".join(chunks)
    if not data:
        raise FileRefused(what, path, "is empty")
    return data


def read_text(path: str, what: str, limit: int) -> str:
    """The UTF-8 text of the regular file ``path`` (see :func:`read_bytes`); never quotes it."""
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileRefused(what, path, f"is not UTF-8 text (byte {e.start})") from None


def read_json(path: str, what: str, limit: int = DOCUMENT_MAX) -> Any:
    """The JSON value in the regular file ``path`` (see :func:`read_bytes`), nested at most
    :data:`JSON_MAX_DEPTH` levels, its numbers finite and its integers at most
    :data:`JSON_MAX_INT_DIGITS` digits (NaN, Infinity, 1e400 and a 400-digit integer are refused, not
    passed on to overflow later). A document cut short says so (an interrupted run wrote it)."""
    import json

    data = read_bytes(path, what, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileRefused(what, path, "is not JSON (not UTF-8 text)") from None
    if not text.strip():
        raise FileRefused(what, path, "is empty (only white space: was the run that wrote it interrupted?)")
    if json_depth_exceeds(text, JSON_MAX_DEPTH):
        raise FileRefused(what, path, f"is not JSON this reader accepts (nested more than {JSON_MAX_DEPTH} "
                                      "levels deep)")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except _NumberRefused as e:
        raise FileRefused(what, path, f"is not JSON this reader accepts ({e})") from None
    except json.JSONDecodeError as e:
        # Cut short: the parser ran off the end, or a string opened and never closed (it runs to the end).
        if e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string"):
            raise FileRefused(what, path, f"is truncated, so not JSON (it ends mid-document after {len(data)} "
                                          "bytes: was the run that wrote it interrupted?)") from None
        raise FileRefused(what, path, f"is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


#: The most digits an integer in a JSON input may have: every count, size and duration minivmm reads fits
#: in 64 bits (20 digits); Python would parse a 4,000-digit one and stop with an error at 4,301.
JSON_MAX_INT_DIGITS = 20


class _NumberRefused(ValueError):
    """A number no minivmm JSON input holds: NaN, an infinity, one out of float range, or too long."""


def _refuse_constant(name: str) -> Any:
    raise _NumberRefused(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise _NumberRefused(f"the number {text[:24]}{'...' if len(text) > 24 else ''} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > JSON_MAX_INT_DIGITS:
        raise _NumberRefused(f"an integer of {len(text.lstrip('-'))} digits is out of range")
    return int(text)


def json_depth_exceeds(text: str, depth: int) -> bool:
    """Whether the JSON text ``text`` nests arrays and objects more than ``depth`` levels deep.

    Counted without recursion and without a Python loop over the characters: strings are cut out, then
    each pass removes the innermost ``[...]`` and ``{...}`` pairs; what still holds a pair after
    ``depth`` passes is deeper. (Text that is not JSON is left for the parser to name.)"""
    import re

    brackets = re.sub(r"[^\[\]{}]+", "", re.sub(r'"[^"\\]*(?:\\.[^"\\]*)*"', "", text))
    innermost = re.compile(r"\[\]|\{\}")
    for _ in range(depth):
        brackets, n = innermost.subn("", brackets)
        if not n:
            return False
    return innermost.search(brackets) is not None


def _refuse_unless_regular(what: str, path: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise FileRefused(what, path, "is a directory, not a regular file")
    if not stat.S_ISREG(mode):
        raise FileRefused(what, path, f"is not a regular file ({kind_of(mode)})")


def _refusal(what: str, path: str, doing: str, e: OSError) -> Exception:
    """The one-line refusal for an OSError on ``path``; a resource error passes through as it is."""
    if e.errno in RESOURCE_ERRNOS:
        return e
    if e.errno == errno.ENXIO:  # open() of a UNIX socket, or of a device with nothing behind it
        return FileRefused(what, path, "is not a regular file (a socket or a device)")
    if e.errno == errno.ELOOP:
        return FileRefused(what, path, "is a symbolic link: name the file itself (links are not followed)")
    return FileRefused(what, path, f"{doing}: {e.strerror or e}")


# --- temporary directories -------------------------------------------------------------------------

def temporary_root() -> str:
    """Where minivmm makes its temporary directories: ``$TMPDIR`` if set, else ``/tmp``, and no other.

    Python's ``tempfile`` moves on to ``/tmp``, ``/var/tmp`` or the current directory when ``$TMPDIR``
    cannot be written (full, read-only, missing): silently, so a clean-up that looks for what an
    earlier run left in one place misses what it left in another."""
    return os.environ.get("TMPDIR") or "/tmp"


def make_private_directory(prefix: str) -> str:
    """A new directory ``PREFIX<8 random hex digits>`` in :func:`temporary_root`, mode 0700 (as
    ``tempfile.mkdtemp`` would make it, without its fall-back). An OSError naming the
    path (ENOSPC for a full ``$TMPDIR``) when it cannot be made: the command line reports it."""
    root = temporary_root()
    for _ in range(8):
        path = os.path.join(root, f"{prefix}{os.urandom(4).hex()}")  # 8 characters, as tempfile's
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no unused name for a temporary directory", root)


# --- writing ---------------------------------------------------------------------------------------

class Output:
    """A destination named on the command line, checked now and written once, at the end.

    ``suffix`` (e.g. ``.png``): the name must end in it (no extension is added: the file written is the
    file named). ``may_replace(path)``: an existing regular file is replaced only if this says yes (a
    host profile is written only over a host profile, ``kind``); it is asked again at write time.
    """

    def __init__(self, path: str, what: str, *, suffix: str | None = None,
                 may_replace: Callable[[str], bool] | None = None, kind: str = "a file minivmm wrote") -> None:
        self.path = path
        self.what = what
        self.may_replace = may_replace
        self.kind = kind
        #: "stdout" or "stderr" for ``-``, ``/dev/stdout`` and ``/dev/stderr``; None for a file.
        self.stream = STREAMS.get(path)
        if self.stream is None:
            self._check(suffix)

    def _check(self, suffix: str | None) -> None:
        path, what = self.path, self.what
        if not path:
            raise FileRefused(what, path, "is an empty name: give a file name")
        self._check_name()
        if suffix is not None and not path.lower().endswith(suffix):
            raise FileRefused(what, path, f"must end in {suffix} (the format written)")
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            raise FileRefused(what, path, f"is in a directory that does not exist ({directory!r})")
        # Creating (and removing) a temporary file there is what the write will do: it answers
        # "writable?" for root, read-only file systems and ACLs alike, which os.access does not.
        os.unlink(self._create_temporary())

    def _check_name(self) -> None:
        """Refuse the target name unless it is absent or a regular file we may replace."""
        path, what = self.path, self.what
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise _refusal(what, path, "cannot be checked", e) from None
        if stat.S_ISLNK(st.st_mode):
            raise FileRefused(what, path, "is a symbolic link: name the file itself (links are never "
                                          "followed, so nothing but what you named is written)")
        if stat.S_ISDIR(st.st_mode):
            raise FileRefused(what, path, "is a directory: give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(what, path, f"exists and is not a regular file ({kind_of(st.st_mode)}): "
                                          "not replaced")
        if self.may_replace is not None and not self.may_replace(path):
            raise FileRefused(what, path, f"exists and is not {self.kind}: not replaced")

    def _create_temporary(self) -> str:
        """Create an empty file under an unpredictable name beside the target; return its name."""
        directory = os.path.dirname(self.path) or "."
        base = os.path.basename(self.path)[:80]
        for _ in range(8):
            tmp = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.minivmm-tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except FileExistsError:
                continue
            except OSError as e:
                raise _refusal(self.what, self.path, "cannot be written", e) from None
            os.close(fd)
            return tmp
        raise FileRefused(self.what, self.path, "cannot be written: no unused temporary name beside it")

    def write(self, data: bytes | str) -> None:
        """Write ``data`` as the whole content of the output (see the module docstring)."""
        raw = data.encode() if isinstance(data, str) else data
        if self.stream is not None:
            self._write_stream(raw)
            return

        def put(fd: int) -> None:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
        self._write_file(put)

    def write_text_from(self, fill: Callable[[TextIO], object]) -> None:
        """Let ``fill`` write the content as text straight into the output, under the same rules as
        :meth:`write` (a report of a long trace is never held in memory whole)."""

        if self.stream is not None:
            stream = sys.stdout if self.stream == "stdout" else sys.stderr
            try:
                fill(stream)
                stream.flush()
            except BrokenPipeError:
                raise
            except OSError as e:
                raise WriteFailed(self.what, self.path, e) from None
            return

        def put(fd: int) -> None:
            with open(fd, "w", encoding="utf-8", closefd=False, buffering=1 << 16) as text:
                fill(text)
        self._write_file(put)

    def _write_file(self, put: Callable[[int], None]) -> None:
        """``put`` writes the content into an fd: of a temporary file beside the target, fsynced and
        renamed over it (see the module docstring)."""
        import signal

        held = {signal.SIGINT, signal.SIGTERM}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        tmp: str | None = None
        try:
            self._check_name()  # again: the name may have changed since the check (a link planted)
            tmp = self._create_temporary()
            fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                put(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            if held & signal.sigpending():
                return  # a stop signal came during the write: keep the old file (the finally cleans up)
            self._check_name()
            os.rename(tmp, self.path)
            tmp = None
            _fsync_directory(os.path.dirname(self.path) or ".")
        except OSError as e:
            if e.errno in RESOURCE_ERRNOS:
                raise
            raise WriteFailed(self.what, self.path, e) from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)  # a held signal is delivered here

    def _write_stream(self, raw: bytes) -> None:
        stream = sys.stdout if self.stream == "stdout" else sys.stderr
        try:
            stream.flush()
            stream.buffer.write(raw)
            stream.buffer.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise WriteFailed(self.what, self.path, e) from None

    def write_with(self, draw: Callable[[BinaryIO], object]) -> None:
        """Let ``draw`` write into memory, then write that (e.g. a plot's ``savefig``)."""
        import io

        buffer = io.BytesIO()
        draw(buffer)
        self.write(buffer.getvalue())


def _fsync_directory(directory: str) -> None:
    """Make the rename durable; a file system that cannot fsync a directory is not an error."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
