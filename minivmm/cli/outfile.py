"""Output files named on the command line (``--plot FILE.png``): checked before any work, written
atomically, never through a symlink and never onto something that is not a regular file.

The check is done before a measurement that can take minutes, so a bad path costs nothing; the write
goes to a temporary file in the target directory, then ``rename(2)`` replaces the name, which never
follows a symlink and never leaves a half-written file behind.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from typing import BinaryIO

from minivmm.cli.errors import CliError

# Imported by commands inside run(), not at start-up: tempfile pulls in random.


def check_output_path(path: str, option: str, suffix: str) -> str:
    """Refuse (as a ``CliError``) an output path we must not or cannot write; return it unchanged.

    Refused: an empty path; a name not ending in ``suffix`` (no extension is added: the file written
    is the file named); a symlink, dangling or not; an existing directory, device, FIFO or socket; a
    directory that does not exist or where a file cannot be created (tested by creating and removing a
    temporary file there, which is what the write will do).
    """
    if not path:
        raise CliError(f"{option} needs a file name (got an empty one), e.g. {option} timing{suffix}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise CliError(f"{option} {path!r}: {e.strerror}") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise CliError(f"{option} {path!r} is a symbolic link: name the file itself (links are not "
                           "followed, so nothing outside what you named is written)")
        if stat.S_ISDIR(st.st_mode):
            raise CliError(f"{option} {path!r} is a directory; give a file name such as timing{suffix}")
        if not stat.S_ISREG(st.st_mode):
            raise CliError(f"{option} {path!r} exists and is not a regular file")
    if not path.lower().endswith(suffix):
        raise CliError(f"{option} {path!r}: the file name must end in {suffix} (the format written)")
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise CliError(f"{option} {path!r}: the directory {directory!r} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".minivmm-", suffix=".tmp", dir=directory)
    except OSError as e:
        raise CliError(f"{option} {path!r} cannot be written: {e.strerror}") from None
    os.close(fd)
    os.unlink(probe)
    return path


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary file is removed if ``write`` fails, so a failed write leaves nothing behind.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".minivmm-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an output file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
