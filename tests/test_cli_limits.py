"""Out of resources, one line: every command under small process limits (prlimit) ends with exit 0 or
with one ``minivmm: error:`` line naming the limit to raise and exit 7, never a traceback; and a
config directory or a $TMPDIR that cannot be used is one line too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

A = str(ROOT / "tests" / "data" / "timing-a.json")
B = str(ROOT / "tests" / "data" / "timing-b.json")
KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")

#: A cheap real run of every command; the ones that need /dev/kvm are skipped without it.
COMMANDS = {
    "boot": ["boot", "guest/hello.bin"],
    "boot --vcpus 8": ["boot", "guest/hello.bin", "--vcpus", "8"],
    "timing": ["timing", "-r", "2", "-n", "20"],
    "model": ["model", "-n", "20"],
    "info": ["info"],
    "compare": ["compare", A, B],
    "trace": ["trace", "--", "true"],
    "--help": ["--help"],
}
NEEDS_KVM = {"boot", "boot --vcpus 8", "timing"}


def under(limit: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``minivmm ARGV`` under ``prlimit --LIMIT``."""
    return subprocess.run(["prlimit", f"--{limit}", sys.executable, "-m", "minivmm", *argv], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)


def assert_fine_or_one_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 0 (the limit was enough), or exit 7 with one line naming the limit; never a traceback.
    (trace's own code for a program that made no KVM ioctl, 2, is the answer when the limit was enough.)"""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("minivmm: error:")]
    if proc.returncode == 7:
        assert len(errors) == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert all(f in errors[0] for f in fragments), errors[0]
    else:
        assert proc.returncode == 0 or "no KVM ioctls" in proc.stderr, (proc.returncode, proc.stderr)


@pytest.mark.parametrize("nofile", [6, 10, 16])
@pytest.mark.parametrize("name", list(COMMANDS))
def test_out_of_file_descriptors_is_one_line_for_every_command(name, nofile):
    if name in NEEDS_KVM and not KVM:
        pytest.skip("needs /dev/kvm")
    proc = under(f"nofile={nofile}", *COMMANDS[name])
    assert_fine_or_one_line(proc, f"out of file descriptors (RLIMIT_NOFILE {nofile})", "ulimit -n")


@pytest.mark.skipif(not KVM, reason="needs /dev/kvm")
def test_boot_and_timing_out_of_file_descriptors_release_everything_and_say_so():
    # Ten descriptors: the interpreter and the command fit, the VM's eventfds do not.
    for argv in (COMMANDS["boot"], COMMANDS["timing"]):
        proc = under("nofile=10", *argv)
        assert proc.returncode == 7 and proc.stderr == ("minivmm: error: out of file descriptors (RLIMIT_NOFILE "
                                                        "10): raise it with `ulimit -n`\n"), proc.stderr


@pytest.mark.parametrize("mib", [60, 120, 200])
@pytest.mark.parametrize("name", list(COMMANDS))
def test_out_of_address_space_is_one_line_for_every_command(name, mib):
    if name in NEEDS_KVM and not KVM:
        pytest.skip("needs /dev/kvm")
    assert_fine_or_one_line(under(f"as={mib << 20}", *COMMANDS[name]), f"RLIMIT_AS {mib} MiB", "ulimit -v")


@pytest.mark.skipif(not KVM, reason="needs /dev/kvm")
def test_guest_memory_that_does_not_fit_the_address_space_is_one_line():
    proc = under(f"as={200 << 20}", "boot", "guest/hello.bin", "-m", "1G")
    assert proc.returncode == 7 and proc.stderr == ("minivmm: error: out of memory (RLIMIT_AS 200 MiB): raise it "
                                                    "with `ulimit -v`, or free memory\n"), proc.stderr


def test_a_plot_is_refused_before_its_import_can_kill_the_process(tmp_path):
    """numpy's OpenBLAS ends the process from C when it cannot allocate: the room is checked first."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "p.png"
    proc = under(f"as={150 << 20}", "compare", A, B, "--plot", str(out))
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr.startswith("minivmm: error: out of memory (RLIMIT_AS 150 MiB)") and proc.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_a_config_home_that_is_a_file_is_one_line(tmp_path):
    not_a_dir = tmp_path / "config"
    not_a_dir.write_text("a file, not a directory")
    env = {**os.environ, "XDG_CONFIG_HOME": str(not_a_dir)}
    proc = subprocess.run([sys.executable, "-m", "minivmm", "timing", "--calibrate", "-r", "5", "--platform", "pvm",
                           "--hz", "250"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("minivmm: error: --profile: the default directory") and "XDG_CONFIG_HOME" in \
        proc.stderr and proc.stderr.count("\n") == 1
    assert not_a_dir.read_text() == "a file, not a directory"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_full_tmpdir_is_named_and_never_a_silent_fallback(tmp_path):
    """In a mount namespace of its own (nothing outside it changes): no tracefs mounted, and $TMPDIR a
    full tmpfs. minivmm trace must make its private tracefs mount point in $TMPDIR or nowhere (tempfile
    would have moved on to /tmp, and succeeded there): --clock kernel is then one line naming ENOSPC."""
    full = tmp_path / "full"
    full.mkdir()
    script = (f"grep ' tracefs ' /proc/mounts | cut -d' ' -f2 | xargs -r -n1 umount -l; "
              f"mount -t tmpfs -o size=16k,nr_inodes=2 none {full} && touch {full}/fill && "
              f"TMPDIR={full} {sys.executable} -m minivmm trace --clock kernel -- true")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    if "unshare failed" in proc.stderr or "mount:" in proc.stderr:
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("minivmm: error: --clock kernel: ") and "No space left on device" in proc.stderr \
        and proc.stderr.count("\n") == 1, proc.stderr
