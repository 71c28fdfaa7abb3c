"""Every option that reads or writes a file, fed what it must refuse; and every command with its
standard output on a full disk.

Each refusal is one line on stderr and exit 2, before any work; nothing is clobbered (a FIFO stays a
FIFO, a device node a device node, a symlink's target untouched) and nothing is left behind. Special
files are made in tmp_path: FIFOs, UNIX sockets, and device nodes made with mknod as copies of
/dev/null and /dev/full (never the real ones)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli

A = str(ROOT / "tests" / "data" / "timing-a.json")
B = str(ROOT / "tests" / "data" / "timing-b.json")
PINNED = ("--platform", "pvm", "--hz", "250")

#: option -> the command line, given the path. Inputs are read before any work.
INPUTS = {
    "boot IMAGE": lambda p: ["boot", p],
    "model --sequence": lambda p: ["model", "--sequence", p],
    "model --show-sequence": lambda p: ["model", "--show-sequence", p],
    "model --profile": lambda p: ["model", "--profile", p],
    "timing --sequence": lambda p: ["timing", "-r", "1", *PINNED, "--sequence", p],
    "timing --profile": lambda p: ["timing", "-r", "1", *PINNED, "--profile", p],
    "timing --baseline": lambda p: ["timing", "-r", "1", *PINNED, "--baseline", p],
    "compare FILE": lambda p: ["compare", A, p],
    "compare --gate BASELINE": lambda p: ["compare", "--gate", p, A],
}
#: Outputs are checked before any work and written at the end.
OUTPUTS = {
    "timing --plot": lambda p: ["timing", "-r", "1", *PINNED, "--plot", p],
    "compare --plot": lambda p: ["compare", A, B, "--plot", p],
    "timing --calibrate --profile": lambda p: ["timing", "--calibrate", "-r", "5", *PINNED, "--profile", p],
    "trace -o": lambda p: ["trace", "-o", p, "--", "true"],
    "trace --save-sequence": lambda p: ["trace", "--save-sequence", p, "--", "true"],
    "timing -o": lambda p: ["timing", "-r", "1", *PINNED, "-o", p],
    "model -o": lambda p: ["model", "-n", "10", "-o", p],
    "compare -o": lambda p: ["compare", A, B, "-o", p],
    "info -o": lambda p: ["info", "-o", p],
}
SUFFIX = {"timing --plot": ".png", "compare --plot": ".png", "timing --calibrate --profile": ".json"}


def device_copy(path: str, of: str) -> None:
    """A character device node at ``path`` with the numbers of ``of`` (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mknod of a character device needs root")
    rdev = os.stat(of).st_rdev
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(os.major(rdev), os.minor(rdev)))


def make(tmp_path, kind: str, suffix: str) -> str:
    """A file of ``kind`` named ``bad<suffix>`` in tmp_path; the path."""
    path = str(tmp_path / f"bad{suffix}")
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        device_copy(path, "/dev/null")
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "link-to-device":
        device_copy(str(tmp_path / "null"), "/dev/null")
        os.symlink(str(tmp_path / "null"), path)
    elif kind == "link-to-file":
        os.symlink(str(precious), path)
    elif kind == "dangling-link":
        os.symlink(str(tmp_path / "nowhere"), path)
    elif kind == "oversized":
        with open(path, "wb") as f:
            f.truncate(4 << 30)  # sparse, past every input's bound (the largest, an image, is 3 GiB)
    elif kind == "empty":
        open(path, "wb").close()
    else:
        raise AssertionError(kind)
    return path


def snapshot(tmp_path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every name in tmp_path with its type, size and (regular files) content."""
    out = {}
    for name in sorted(os.listdir(tmp_path)):
        st = os.lstat(tmp_path / name)
        content = (tmp_path / name).read_bytes() if stat.S_ISREG(st.st_mode) and st.st_size < 1 << 20 else None
        out[name] = (stat.S_IFMT(st.st_mode), st.st_size, content)
    return out


def assert_refused(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("minivmm: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert proc.stdout == ""


INPUT_KINDS = ["fifo", "device", "socket", "directory", "link-to-device", "dangling-link", "oversized", "empty"]


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("option", list(INPUTS))
def test_every_input_option_refuses_what_is_not_a_bounded_regular_file(tmp_path, option, kind):
    path = make(tmp_path, kind, ".json")
    before = snapshot(tmp_path)
    proc = run_cli(*INPUTS[option](path), timeout=60)
    assert_refused(proc, repr(path))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["fifo", "device", "socket", "directory", "link-to-file", "dangling-link"])
@pytest.mark.parametrize("option", list(OUTPUTS))
def test_every_output_option_refuses_what_exists_and_is_not_a_regular_file(tmp_path, option, kind):
    path = make(tmp_path, kind, SUFFIX.get(option, ".txt"))
    before = snapshot(tmp_path)
    proc = run_cli(*OUTPUTS[option](path), timeout=60)
    assert_refused(proc, repr(path))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("option", ["-o", "--save-sequence"])
def test_a_symlink_the_traced_program_plants_is_refused_at_write_time(tmp_path, option):
    """The traced program (or anything else) replaces the checked name with a link during the run:
    the write refuses it, never follows it, and leaves no temporary file."""
    gcc = subprocess.run(["sh", "-c", "command -v gcc"], capture_output=True).returncode == 0
    out = tmp_path / "out.txt"
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    made = ["out.txt", "precious"]
    if option == "--save-sequence":  # written only when KVM ioctls were traced: a program that makes some
        if not gcc or not os.access("/dev/kvm", os.R_OK | os.W_OK):
            pytest.skip("needs gcc and /dev/kvm for a program with a KVM set-up")
        prog = tmp_path / "prog"
        build = subprocess.run(["gcc", "-static", "-O2", "-o", str(prog), str(ROOT / "tests" / "trace_prog.c")],
                               capture_output=True, text=True)
        if build.returncode:
            pytest.skip(f"gcc -static failed: {build.stderr[:200]}")
        command = f"ln -s {precious} {out} && exec {prog} 2 0"
        made.append("prog")
    else:
        command = f"ln -s {precious} {out}"
    proc = run_cli("trace", option, str(out), "--", "sh", "-c", command, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("minivmm: error:")]
    assert len(errors) == 1 and "symbolic link" in errors[0] and "Traceback" not in proc.stderr, proc.stderr
    assert precious.read_text() == "keep me" and os.path.islink(out)
    assert sorted(os.listdir(tmp_path)) == sorted(made)


#: Every command, with work that writes to stdout; the kvm ones are skipped without /dev/kvm.
STDOUT_COMMANDS = {
    "--help": ["--help"],
    "--version": ["--version"],
    "boot --help": ["boot", "--help"],
    "info": ["info"],
    "model": ["model", "-n", "20"],
    "model --list-sequences": ["model", "--list-sequences"],
    "compare": ["compare", A, B],
    "compare --json": ["compare", "--json", A, B],
    "boot": ["boot", "guest/hello.bin"],
    "boot --json": ["boot", "guest/hello.bin", "--json"],
    "timing": ["timing", "-r", "2", "-n", "20"],
    "trace": ["trace", "--", "true"],
}
NEEDS_KVM = {"boot", "boot --json", "timing"}


@pytest.mark.parametrize("name", list(STDOUT_COMMANDS))
def test_a_full_disk_on_stdout_is_one_line_and_exit_6_for_every_command(tmp_path, name):
    if name in NEEDS_KVM and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/kvm")
    full = str(tmp_path / "full")
    device_copy(full, "/dev/full")
    with open(full, "w") as stdout:
        proc = subprocess.run([sys.executable, "-m", "minivmm", *STDOUT_COMMANDS[name]], stdout=stdout,
                              stderr=subprocess.PIPE, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 6, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines == [lines[0]] and lines[0].startswith("minivmm: error: standard output could not be written: "
                                                       "No space left on device (ENOSPC)"), proc.stderr



@pytest.mark.parametrize("name", [n for n in STDOUT_COMMANDS if n != "trace"])  # trace's code is the program's
def test_a_reader_that_left_is_quiet_and_the_command_keeps_its_code(name):
    """stdout a pipe whose reader is gone before anything is written (EPIPE on every write): no error
    line, and the command's own exit code (0 here), as `minivmm ... | head` users expect."""
    if name in NEEDS_KVM and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/kvm")
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, "-m", "minivmm", *STDOUT_COMMANDS[name]], stdout=w,
                              stderr=subprocess.PIPE, text=True, timeout=120, cwd=ROOT)
    finally:
        os.close(w)
    assert proc.returncode == 0 and proc.stderr == "", (proc.returncode, proc.stderr)
