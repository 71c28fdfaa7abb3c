"""The one file layer (minivmm/files.py): what it reads, what it refuses, how it writes.

Special files are made in tmp_path: FIFOs, UNIX sockets and a copy of /dev/null's device node made with
mknod (never a real device node)."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivmm import files
from minivmm.files import FileRefused, Output, WriteFailed


def make_special(tmp_path, kind: str) -> str:
    """A special file of ``kind`` in tmp_path (fifo, chardev, socket, directory, dangling link, link to a
    device node), for the tests to refuse."""
    path = str(tmp_path / f"{kind}.json")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":
        if os.geteuid() != 0:
            pytest.skip("mknod of a character device needs root")
        rdev = os.stat("/dev/null").st_rdev
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(os.major(rdev), os.minor(rdev)))
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        sock.close()  # the socket file stays
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "dangling-link":
        os.symlink(str(tmp_path / "nowhere"), path)
    elif kind == "link-to-fifo":
        os.mkfifo(str(tmp_path / "target-fifo"))
        os.symlink(str(tmp_path / "target-fifo"), path)
    else:
        raise AssertionError(kind)
    return path


SPECIAL = ["fifo", "chardev", "socket", "directory", "dangling-link", "link-to-fifo"]


@pytest.mark.parametrize("kind", SPECIAL)
def test_reading_refuses_everything_but_a_regular_file_in_one_line(tmp_path, kind):
    path = make_special(tmp_path, kind)
    mode = os.lstat(path).st_mode
    with pytest.raises(FileRefused) as e:
        files.read_json(path, "--baseline")
    message = str(e.value)
    assert message.startswith(f"--baseline {path!r} ") and "\n" not in message
    assert ("does not exist" if kind == "dangling-link" else "not a regular file") in message
    assert os.lstat(path).st_mode == mode  # still what it was


def test_reading_is_bounded_and_refuses_empty_files(tmp_path):
    big = tmp_path / "big.seq"
    with open(big, "wb") as f:
        f.truncate(files.SEQUENCE_FILE_MAX + 1)  # sparse: costs nothing to make
    with pytest.raises(FileRefused, match=f"is {files.SEQUENCE_FILE_MAX + 1} bytes"):
        files.read_text(str(big), "sequence file", files.SEQUENCE_FILE_MAX)
    empty = tmp_path / "empty.seq"
    empty.write_bytes(b"")
    with pytest.raises(FileRefused, match="is empty"):
        files.read_text(str(empty), "sequence file", files.SEQUENCE_FILE_MAX)
    with pytest.raises(FileRefused, match="not UTF-8 text"):
        (tmp_path / "bin").write_bytes(b"\xff\xfe")
        files.read_text(str(tmp_path / "bin"), "sequence file", files.SEQUENCE_FILE_MAX)
    ok = tmp_path / "ok.seq"
    ok.write_text("create_vm\n")
    os.symlink(ok, tmp_path / "link.seq")  # reading through a link to a regular file is harmless
    assert files.read_text(str(tmp_path / "link.seq"), "sequence file", 100) == "create_vm\n"


def test_deeply_nested_json_is_one_line_not_a_recursion_error(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(FileRefused, match="nested more than 64 levels"):
        files.read_json(str(deep), "file")
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"a": [[[{"b": "[[[[not nesting]]]] \\\" {"}]]]}))
    assert files.read_json(str(ok), "file")["a"][0][0][0]["b"].startswith("[[[[")


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


JSON = st.recursive(st.none() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(alphabet='[]{}"\\', max_size=3), children, max_size=3),
                    max_leaves=30)


@given(JSON, st.integers(0, 8))
def test_the_depth_check_agrees_with_the_parsed_value(value, limit):
    assert files.json_depth_exceeds(json.dumps(value), limit) == (_depth(value) > limit)


@pytest.mark.parametrize("kind", SPECIAL)
def test_an_output_that_exists_and_is_not_a_regular_file_is_refused_untouched(tmp_path, kind):
    path = make_special(tmp_path, kind)
    before = sorted(os.listdir(tmp_path))
    mode = os.lstat(path).st_mode
    with pytest.raises(FileRefused) as e:
        Output(path, "-o")
    assert str(e.value).startswith(f"-o {path!r} ") and "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == before and os.lstat(path).st_mode == mode


def test_a_symlink_planted_after_the_check_is_refused_at_write_time_and_never_followed(tmp_path):
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    out = tmp_path / "report.txt"
    target = Output(str(out), "--output")
    os.symlink(precious, out)  # e.g. by the traced program, during the run
    with pytest.raises(FileRefused, match="symbolic link"):
        target.write("new report")
    assert precious.read_text() == "keep me" and os.path.islink(out)
    assert sorted(os.listdir(tmp_path)) == ["precious", "report.txt"]
    os.unlink(out)
    os.mkfifo(out)  # or a FIFO
    with pytest.raises(FileRefused, match="a FIFO"):
        target.write("new report")
    assert stat.S_ISFIFO(os.lstat(out).st_mode) and sorted(os.listdir(tmp_path)) == ["precious", "report.txt"]


def test_a_write_replaces_a_regular_file_whole_and_leaves_nothing_else(tmp_path):
    out = tmp_path / "p.json"
    out.write_text("old")
    Output(str(out), "--profile", suffix=".json").write('{"new": 1}\n')
    assert out.read_text() == '{"new": 1}\n' and os.listdir(tmp_path) == ["p.json"]
    with pytest.raises(FileRefused, match="must end in .png"):
        Output(str(tmp_path / "p.txt"), "--plot", suffix=".png")
    with pytest.raises(FileRefused, match="not a minivmm host profile"):
        Output(str(out), "--profile", may_replace=lambda p: False, kind="a minivmm host profile")


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, err):
    out = tmp_path / "p.png"
    out.write_bytes(b"old")
    target = Output(str(out), "--plot", suffix=".png")
    real_write = os.write

    def full(fd, data):
        real_write(fd, bytes(data[:3]))  # part of it gets there first, as on a real disk
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(WriteFailed) as e:
        target.write(b"new content")
    assert errno.errorcode[err] in str(e.value) and "left as it was" in str(e.value)
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["p.png"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_during_the_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, signum):
    out = tmp_path / "profile.json"
    out.write_text("old")
    target = Output(str(out), "--profile")
    real_fsync = os.fsync

    def signalled(fd):  # the signal comes while the data is on its way to the disk
        signal.pthread_kill(threading.main_thread().ident, signum)
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", signalled)

    class Stopped(Exception):
        pass

    def stop(*_):
        raise Stopped
    old = signal.signal(signum, stop)
    try:
        with pytest.raises(Stopped):
            target.write("new")
    finally:
        signal.signal(signum, old)
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["profile.json"]


def test_dash_and_dev_stdout_and_stderr_name_the_streams(capfdbinary):
    Output("-", "-o").write(b"one\n")
    Output("/dev/stdout", "-o").write("two\n")
    Output("/dev/stderr", "-o").write("three\n")
    out, err = capfdbinary.readouterr()
    assert out == b"one\ntwo\n" and err == b"three\n"


def test_a_stream_that_cannot_be_written_is_a_write_failure(monkeypatch):
    class Full:
        def flush(self):
            pass

        class buffer:  # noqa: N801
            @staticmethod
            def write(data):
                raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("sys.stdout", Full())
    with pytest.raises(WriteFailed, match="standard output could not be written: No space left on device"):
        Output("-", "-o").write("x")
