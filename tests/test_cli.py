"""The command line as a user meets it: one-line errors, documented exit codes, no tracebacks."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli


def assert_one_line_error(proc, code: int, *fragments: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("minivmm")
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_image(tmp_path):
    assert_one_line_error(run_cli("boot", str(tmp_path / "nope.bin")), 2, "does not exist")


def test_directory_image(tmp_path):
    assert_one_line_error(run_cli("boot", str(tmp_path)), 2, "directory")


def test_empty_image(tmp_path):
    p = tmp_path / "e.bin"
    p.write_bytes(b"")
    assert_one_line_error(run_cli("boot", str(p)), 2, "empty")


def test_image_larger_than_ram(tmp_path):
    p = tmp_path / "big.bin"
    p.write_bytes(b"\xf4" * (2 << 20))
    assert_one_line_error(run_cli("boot", str(p), "--mem", "1M", "--mode", "long"), 2, "does not fit")


def test_unknown_mode():
    assert_one_line_error(run_cli("boot", "guest/hello.bin", "--mode", "v86"), 2, "--mode", "v86")


@pytest.mark.parametrize("args,fragment", [
    (["--mem", "lots"], "--mem"),
    (["--mem", "5G"], "--mem"),
    (["--mem", "1000"], "4 KiB"),
    (["--vcpus", "0"], "--vcpus"),
    (["--timeout", "0"], "--timeout"),
    (["--load-addr", "zero"], "--load-addr"),
    (["--load-addr", "0x20000"], "real mode"),
    (["--load-addr", "0xff0000"], "system area"),
    (["--bogus"], "--bogus"),
])
def test_bad_options(args, fragment):
    assert_one_line_error(run_cli("boot", "guest/hello.bin", *args), 2, fragment)


def test_kvm_device_missing(tmp_path):
    assert_one_line_error(run_cli("boot", "guest/hello.bin", "--kvm", str(tmp_path / "kvm")), 4,
                          "does not exist")


def test_kvm_device_not_kvm(tmp_path):
    p = tmp_path / "kvm"
    p.write_bytes(b"")
    assert_one_line_error(run_cli("boot", "guest/hello.bin", "--kvm", str(p)), 4, "not a character device")


def test_kvm_device_not_a_kvm_char_device():
    assert_one_line_error(run_cli("boot", "guest/hello.bin", "--kvm", "/dev/null"), 4, "not a KVM device")


def test_help_teaches():
    proc = run_cli("boot", "--help")
    assert proc.returncode == 0
    for word in ("--mode", "--mem", "--load-addr", "--vcpus", "--timeout", "--strict", "--trace", "--json",
                 "Exit codes"):
        assert word in proc.stdout
    top = run_cli("--help")
    assert top.returncode == 0 and "boot" in top.stdout and "info" in top.stdout


def test_no_arguments_shows_help_and_is_a_usage_error():
    proc = run_cli()
    assert proc.returncode in (0, 2)
    assert "Usage" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_info_json_always_works():
    proc = run_cli("info", "--json")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert {"kernel", "api_version", "capabilities", "hz", "platform"} <= data.keys()


@pytest.mark.kvm
def test_boot_hello_end_to_end():
    proc = run_cli("boot", "guest/hello.bin")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hello from a minivmm guest!\n")
    assert "every vCPU halted (exit code 0)" in proc.stdout


@pytest.mark.kvm
def test_boot_json():
    proc = run_cli("boot", "guest/mmio.bin", "--mode", "protected", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["halted"] is True and data["exit_code"] == 0
    assert data["console"] == "mmio: scratch ok\nmmio: doorbell ok\n"
    assert data["exits"]["mmio_write"] == 3 and data["doorbell_kernel_writes"] == 3
    assert {"setup_ms", "first_exit_ms", "run_ms"} <= data.keys()


@pytest.mark.kvm
def test_trace_prints_each_exit_with_its_instruction():
    proc = run_cli("boot", "guest/hello.bin", "--trace")
    assert proc.returncode == 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 57
    assert "in al, dx" in lines[0] and "IO in" in lines[0]
    assert "HLT" in lines[-1]


@pytest.mark.kvm
def test_timeout_exit_code(tmp_path):
    p = tmp_path / "loop.bin"
    p.write_bytes(bytes.fromhex("ebfe"))
    proc = run_cli("boot", str(p), "--timeout", "0.2")
    assert proc.returncode == 1
    assert "timed out" in proc.stdout and "jmp 0x1000" in proc.stdout
