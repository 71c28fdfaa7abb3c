"""The command line as a user meets it: one-line errors, documented exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli


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
    (["--mem", "1001K"], "4 KiB"),
    (["--vcpus", "0"], "--vcpus"),
    (["--timeout", "0"], "--timeout"),
    (["--load-addr", "zero"], "--load-addr"),
    (["--load-addr", "0x20000"], "real mode"),
    (["--load-addr", "0xff0000"], "system area"),
    (["--bogus"], "--bogus"),
])
def test_bad_options(args, fragment):
    assert_one_line_error(run_cli("boot", "guest/hello.bin", *args), 2, fragment)


def test_kvm_device_missing_is_cannot_run_here(tmp_path):
    # exit 4, not 2: a wrapper (or a test runner) can tell "cannot run here" from "bad usage"
    assert_one_line_error(run_cli("boot", "guest/hello.bin", "--kvm", str(tmp_path / "kvm")), 4,
                          "does not exist")


def test_kvm_device_not_accessible_is_cannot_run_here(tmp_path):
    import os
    if os.geteuid() == 0:
        pytest.skip("root can open a mode-000 file")
    p = tmp_path / "kvm"
    p.write_bytes(b"")
    p.chmod(0)
    assert_one_line_error(run_cli("boot", "guest/hello.bin", "--kvm", str(p)), 4, "not readable")


def test_kvm_device_not_kvm(tmp_path):
    p = tmp_path / "kvm"
    p.write_bytes(b"")
    assert_one_line_error(run_cli("boot", "guest/hello.bin", "--kvm", str(p)), 2, "not a character device")


def test_kvm_device_not_a_kvm_char_device():
    assert_one_line_error(run_cli("boot", "guest/hello.bin", "--kvm", "/dev/null"), 2, "not a KVM device")


def test_help_teaches():
    proc = run_cli("boot", "--help")
    assert proc.returncode == 0
    for word in ("--mode", "--mem", "--load-addr", "--vcpus", "--timeout", "--strict", "--trace", "--json",
                 "Exit codes"):
        assert word in proc.stdout
    top = run_cli("--help")
    assert top.returncode == 0 and "boot" in top.stdout and "info" in top.stdout


def test_no_arguments_is_a_one_line_usage_error():
    proc = run_cli()
    assert_one_line_error(proc, 2, "Usage", "boot", "timing", "model", "info")
    assert proc.stdout == ""


def test_boot_without_image_is_one_line_on_stderr():
    proc = run_cli("boot")
    assert_one_line_error(proc, 2, "IMAGE", "guest/hello.bin")
    assert proc.stdout == ""


@pytest.mark.parametrize("args,fragments", [
    (["bogus"], ["unknown command", "bogus"]),
    (["--bogus", "boot"], ["unknown option --bogus", "after it"]),  # not "boot needs IMAGE"
    (["--mem", "64", "boot", "guest/hello.bin"], ["unknown option --mem", "minivmm COMMAND --help"]),
    (["boot", "guest/hello.bin", "--mem"], ["--mem needs a value"]),
    (["boot", "guest/hello.bin", "--vcpus", "many"], ["--vcpus", "'many' is not a whole number"]),
    (["boot", "guest/hello.bin", "--vcpus", "65"], ["--vcpus", "between 1 and 64"]),
    (["boot", "guest/hello.bin", "--timeout", "nan"], ["--timeout"]),
    (["boot", "guest/hello.bin", "--inject", "everything"], ["--inject", "drop-registration"]),
    (["boot", "guest/hello.bin", "--json=yes"], ["--json takes no value"]),
    (["boot", "guest/hello.bin", "extra.bin"], ["extra.bin"]),
    (["boot", "guest/hello.bin", "--no-check", "--inject", "stale-bus"], ["needs the check on"]),
    (["model", "--hz", "0x"], ["--hz"]),
    (["model", "--samples", "0"], ["--samples", "between 10 and"]),
    (["timing", "--repeat", "-1"], ["--repeat"]),
    (["info", "--kvm"], ["--kvm needs a value"]),
])
def test_usage_errors_are_one_line_in_our_words(args, fragments):
    proc = run_cli(*args)
    assert_one_line_error(proc, 2, *fragments)
    line = proc.stderr.strip()
    assert line.startswith("minivmm: error: ")
    # neither argparse's wording nor Python's leaks through
    for foreign in ("argument ", "invalid int value", "invalid literal", "Value error", "invalid choice",
                    "the following arguments are required"):
        assert foreign not in line


def test_version():
    from minivmm import __version__
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"minivmm {__version__}"


def test_mem_has_the_short_name_m_and_mode_only_its_long_name(tmp_path):
    p = tmp_path / "big.bin"
    p.write_bytes(b"\xf4" * (2 << 20))
    assert_one_line_error(run_cli("boot", str(p), "-m", "1M"), 2, "does not fit")
    help_text = run_cli("boot", "--help").stdout
    assert "-m, --mem SIZE" in help_text and "  --mode MODE" in help_text


def test_flags_show_no_value_placeholder_and_help_fits_80_columns():
    import os
    import subprocess
    import sys

    from conftest import ROOT
    for command in ([], ["boot"], ["timing"], ["model"], ["info"]):
        proc = subprocess.run([sys.executable, "-m", "minivmm", *command, "--help"], capture_output=True,
                              text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "80"})
        assert proc.returncode == 0, proc.stderr
        assert "<bool>" not in proc.stdout and "BOOLEAN" not in proc.stdout
        assert max(len(line) for line in proc.stdout.splitlines()) <= 80, command
    boot_help = run_cli("boot", "--help").stdout
    for flag in ("--strict", "--trace", "--json", "--check / --no-check", "--ftrace"):
        assert re.search(rf"^  {flag} ", boot_help, re.M), flag


def test_the_parser_spells_the_enums_as_the_vmm_does():
    from minivmm.cli.boot_cmd import INJECTIONS, MODES
    from minivmm.shadow.checker import Injection
    from minivmm.vmm.boot import Mode
    assert MODES == tuple(m.value for m in Mode)
    assert INJECTIONS == tuple(i.value for i in Injection)


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


def _trace(proc) -> list[tuple[int, str, str]]:
    """(address, instruction, exit) per --trace line."""
    out = []
    for line in proc.stderr.strip().splitlines():
        m = re.match(r"^vcpu\d+ #\d+\s+rip=(0x[0-9a-f]+)\s+(.*?)\s{2,}(\S.*)$", line)
        assert m, line
        out.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return out


@pytest.mark.kvm
def test_trace_shows_the_instruction_that_caused_each_exit(tmp_path):
    """KVM moves RIP past an OUT, an MMIO write and a HLT before it exits; --trace must still show the
    instruction that exited, at its own address, for every exit kind (and not the next one)."""
    p = tmp_path / "io.bin"
    p.write_bytes(bytes.fromhex("ba0001" "ee" "ef" "66ef" "e680" "ec" "f4"))
    lines = _trace(run_cli("boot", str(p), "--trace"))
    assert [(a, i) for a, i, _ in lines] == [
        (0x1003, "out dx, al"), (0x1004, "out dx, ax"), (0x1005, "out dx, eax"), (0x1007, "out 0x80, al"),
        (0x1009, "in al, dx"), (0x100A, "hlt")]
    assert [e.split()[:2] for _, _, e in lines][:5] == [["IO", "out"]] * 4 + [["IO", "in"]]

    # MMIO writes and reads, and a string OUT (which the emulator has not finished: RIP is still on it)
    kinds = {}
    for _, insn, exit_ in _trace(run_cli("boot", "guest/mmio.bin", "--mode", "protected", "--trace")):
        kind = " ".join(exit_.split()[:2])
        kinds.setdefault(kind, set()).add(insn.split(" ")[0] if not insn.startswith("rep") else insn.split()[1])
        if kind == "MMIO write":
            assert re.match(r"^mov (byte|word|dword) ptr \[", insn), (insn, exit_)
            size = int(re.search(r"len (\d+)", exit_).group(1))
            assert insn.split()[1] == {1: "byte", 2: "word", 4: "dword"}[size]
        elif kind == "MMIO read":
            assert "ptr [" in insn, (insn, exit_)
        elif kind == "IO out":
            assert insn.startswith(("out", "rep outs")), (insn, exit_)
        elif kind == "HLT":
            assert insn == "hlt"
    assert {"MMIO write", "MMIO read", "IO out", "HLT"} <= kinds.keys()


@pytest.mark.kvm
def test_strict_shows_the_instruction_that_made_the_unclaimed_access(tmp_path):
    p = tmp_path / "strict.bin"
    p.write_bytes(bytes.fromhex("ba0001" "ee" "f4"))   # mov dx, 0x100; out dx, al; hlt
    proc = run_cli("boot", str(p), "--strict")
    assert proc.returncode == 1
    assert "at rip 0x1003: out dx, al" in proc.stdout


@pytest.mark.kvm
def test_timeout_exit_code(tmp_path):
    p = tmp_path / "loop.bin"
    p.write_bytes(bytes.fromhex("ebfe"))
    proc = run_cli("boot", str(p), "--timeout", "0.2")
    assert proc.returncode == 1
    assert "timed out" in proc.stdout and "jmp 0x1000" in proc.stdout


def test_a_huge_sparse_image_is_refused_by_its_size_before_it_is_read(tmp_path):
    import resource
    p = tmp_path / "sparse.bin"
    with open(p, "wb") as f:
        f.truncate(2 << 30)  # 2 GiB, no blocks on disk
    proc = run_cli("boot", str(p))
    assert_one_line_error(proc, 2, "2147483648 bytes", "does not fit", "--mem")
    # had it been read, the child would have held 2 GiB; ru_maxrss is in KiB
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 1 << 20


def test_ctrl_c_while_importing_a_command_ends_quietly_with_130(monkeypatch, capsys):
    import importlib

    from minivmm.cli import app

    def interrupted(name, package=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(importlib, "import_module", interrupted)
    assert app.main(["model"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_ctrl_c_during_start_up_never_shows_a_traceback_from_minivmm():
    """SIGINT at moments spread over start-up. Before minivmm's first line runs (the interpreter's own
    initialisation, site and runpy imports) Python may still print its traceback, or a "Fatal Python
    error" naming the KeyboardInterrupt (when it lands while the interpreter sets up its standard
    streams, which a busy host stretches); from then on, none: the process ends with 130, or is
    killed by the signal before our handler exists."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    with open("/proc/self/cmdline", "rb") as f:
        ours = f.read()

    def executed(pid: int) -> bool:
        # A SIGINT that lands between fork and exec is taken by the parent's handler in the child and
        # lost with exec (the program then runs to its end): start counting from the exec, when the
        # child's command line stops being ours.
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read() != ours
        except OSError:
            return True  # gone already: it ran
    for i in range(24):
        p = subprocess.Popen([sys.executable, "-m", "minivmm", "model", "-n", "20000"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not executed(p.pid) and time.monotonic() < deadline:
            time.sleep(0.0002)
        time.sleep(0.005 * i)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert "minivmm/" not in err and "minivmm\\" not in err, err
        if err.startswith("Fatal Python error: init_") and "KeyboardInterrupt" in err:
            assert p.returncode == 1, err  # the interpreter's own start, before any line of ours
            continue
        if "Traceback" not in err:
            assert p.returncode in (130, -signal.SIGINT) and err == "", (p.returncode, err)


def test_help_and_readme_cite_messages_not_internal_numbers():
    """Every place the project cites the mailing list for a reader (README, each command's --help) names
    the message, never an internal 'seed NNN' number."""
    from conftest import ROOT
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
    texts = {str(path.relative_to(ROOT)): path.read_text() for path in pages}
    top = run_cli("--help").stdout
    commands = re.findall(r"^  ([a-z]+) ", top.split("Commands:", 1)[1], re.M)
    assert {"boot", "timing", "model", "info"} <= set(commands)
    for command in commands:
        texts[f"minivmm {command} --help"] = run_cli(command, "--help").stdout
    for where, text in texts.items():
        assert not re.search(r"\bseeds? ?0\d\d", text), where


def test_each_command_module_declares_the_command_it_is_named_after():
    # main() builds only the named command, found by this naming rule.
    from minivmm.cli.app import COMMANDS, build_app
    for name in COMMANDS:
        assert [c.name for c in build_app(name).registered_commands] == [name]


def test_a_command_imports_no_other_commands_module():
    import subprocess
    import sys
    code = ("import sys, typer; from minivmm.cli import app; typer.main.get_command(app.build_app("
            "app._command_in(['model', '--json'])));"
            "print(sorted(m for m in sys.modules if m.startswith('minivmm.cli.') and m.endswith('_cmd')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['minivmm.cli.model_cmd']"


def test_an_unknown_command_is_still_refused_in_one_line(capsys):
    from minivmm.cli.app import main
    assert main(["bogus"]) == 2
    assert capsys.readouterr().err == "minivmm: error: unknown command 'bogus' (see minivmm --help)\n"


def _console_main_in_child(prelude: str, argv: list[str]):
    import subprocess
    import sys
    code = (f"import sys\n{prelude}\nsys.argv = {['minivmm', *argv]!r}\n"
            "from minivmm.cli.app import console_main\nconsole_main()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_the_command_exits_with_its_code_after_atexit_and_with_its_output_flushed():
    # console_main skips the interpreter's teardown: what the teardown did that matters must still happen.
    proc = _console_main_in_child("import atexit; atexit.register(lambda: print('atexit ran'))", ["--version"])
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [proc.stdout.splitlines()[0], "atexit ran"]
    assert proc.stdout.startswith("minivmm ")
    assert _console_main_in_child("", ["bogus"]).returncode == 2


def test_the_command_still_waits_for_a_running_non_daemon_thread():
    prelude = ("import threading, time\n"
               "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done', flush=True))).start()")
    proc = _console_main_in_child(prelude, ["--version"])
    assert proc.returncode == 0 and "thread done" in proc.stdout


@pytest.mark.parametrize("args,fragment", [
    (["boot", "guest/hello.bin", "-m", "-1M"], "--mem: -1M must be positive"),
    (["boot", "guest/hello.bin", "--vcpus", "-2"], "--vcpus: -2 must be positive"),
    (["compare", "--threshold", "-5%", "a.json", "b.json"], "--threshold: -5% must be positive"),
    (["timing", "--hz", "-100"], "--hz: -100 must be positive"),
    (["model", "--seed", "-1"], "--seed: -1 must be positive"),
])
def test_a_negative_number_is_must_be_positive_not_needs_a_value(args, fragment):
    assert_one_line_error(run_cli(*args), 2, fragment)


def test_a_bare_mem_number_is_mib_as_in_qemu(tmp_path):
    p = tmp_path / "big.bin"
    p.write_bytes(b"\xf4" * (2 << 20))
    # 2 MiB of image: refused by -m 1 (one MiB), as by -m 1M; -m 1048576 is a million MiB, out of range
    for mem in ("1", "1M"):
        assert_one_line_error(run_cli("boot", str(p), "-m", mem, "--mode", "long"), 2, "does not fit")
    assert_one_line_error(run_cli("boot", str(p), "-m", "1048576"), 2, "--mem")
    from minivmm.cli.options import parse_size
    assert parse_size("128") == parse_size("128M") == 128 << 20 and parse_size("1G") == 1 << 30


def test_help_lists_every_option_with_its_default():
    boot = run_cli("boot", "--help").stdout
    for option, default in (("--mem", "16M"), ("--mode", "real"), ("--vcpus", "1"), ("--kvm", "/dev/kvm"),
                            ("--timeout", "10.0"), ("--load-addr", "0x1000")):
        assert re.search(rf"{option} .*?\[default: {re.escape(default)}\]", " ".join(boot.split())), option
    timing = " ".join(run_cli("timing", "--help").stdout.split())
    assert "[default: 100]" in timing and "[default: 2000]" in timing and "this host's" in timing
    model = " ".join(run_cli("model", "--help").stdout.split())
    assert "[default: 1000]" in model and "else 100 and vmx" in model


def test_dash_p_is_the_process_id_never_the_platform():
    for command in ("timing", "model", "trace", "repro"):
        text = run_cli(command, "--help").stdout
        assert re.search(r"^  --platform PLATFORM", text, re.M) and "-p, --platform" not in text
    assert re.search(r"^  -p, --pid PID", run_cli("trace", "--help").stdout, re.M)


@pytest.mark.parametrize("where", ["file", "-", "/dev/stdout", "/dev/stderr"])
def test_output_writes_the_report_to_a_file_or_the_named_stream(tmp_path, where):
    target = str(tmp_path / "model.txt") if where == "file" else where
    proc = run_cli("model", "-n", "10", "-o", target)
    assert proc.returncode == 0, proc.stderr
    report = {"file": lambda: (tmp_path / "model.txt").read_text(), "-": lambda: proc.stdout,
              "/dev/stdout": lambda: proc.stdout, "/dev/stderr": lambda: proc.stderr}[where]()
    assert report.startswith("sequence firecracker at HZ=100 on vmx")
    if where == "file":
        assert proc.stdout == "" and os.listdir(tmp_path) == ["model.txt"]


def test_a_ctrl_c_that_python_wrapped_in_another_error_is_still_an_interruption(capsys, monkeypatch):
    """A KeyboardInterrupt raised while a class is made (``__set_name__``, as during a dataclass's import)
    reaches the command line wrapped in a RuntimeError on Python 3.11: it is still 130, quietly."""
    from minivmm.cli import app, model_cmd

    def interrupted_import(*args, **kwargs):
        class Descriptor:
            def __set_name__(self, owner, name):
                raise KeyboardInterrupt

        type("Made", (), {"field": Descriptor()})
    monkeypatch.setattr(model_cmd, "run", interrupted_import)
    assert app.main(["model"]) == 130
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("module", ["typer", "minivmm._kvm"])
def test_a_broken_installation_is_one_line_and_exit_4(module, tmp_path):
    # A required package that cannot be imported (a partial install, a venv without its dependencies)
    # is the installation's fault: one line naming it and the repair, the "cannot run here" code.
    blocker = (f"import sys; sys.modules[{module!r}] = None; "
               "sys.argv = ['minivmm', 'boot', " + repr(str(ROOT / "guest" / "hello.bin")) + "]; "
               "from minivmm.cli.app import main; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"minivmm: error: the installation is incomplete: cannot import {module}")
    assert "reinstall" in line
