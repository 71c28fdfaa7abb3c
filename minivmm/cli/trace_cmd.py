"""``minivmm trace [options] (-- COMMAND [ARGS...] | -p PID)``: record, time and explain the KVM set-up
of any VMM, started here or already running.

Exit status: the traced program's own (its exit code, or 128+N if a signal N killed it), as strace
does; 0 when ``--until first-run`` ended it (or ``--detach`` left it running) as asked; 1 on
``--timeout``; 130/143 when minivmm trace itself got SIGINT/SIGTERM (also when, with ``-p``, it let the
process go then); also 130/143 when they came while the model explained (the trace is written without
the explanation). minivmm trace's own errors: 2 for bad usage, a COMMAND that cannot be run, ptrace or
(``--clock kernel``) tracefs refused, an unwritable ``--save-sequence``/``--output``, a
``--save-sequence`` with no VM set-up to save, and a COMMAND that made no KVM ioctl (``--json`` still
carries the program's own status under ``tracee``); 4 when it made none because /dev/kvm is not
accessible here.
"""

from __future__ import annotations

import os
import shutil
import sys
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from minivmm.cli.app import Command, run_command
from minivmm.cli.errors import CliError, ExitCode
from minivmm.cli.options import Format, HostHz, HostPlatform, Json, ReportTo, Samples, choice, float_range, int_range

DESCRIPTION = """\
Start COMMAND (a VMM: QEMU, Firecracker, crosvm, cloud-hypervisor, minivmm boot ...) and record every
KVM ioctl that it, its threads and its children issue: the fd's role (system, vm, vcpuN), the request,
the decoded argument, the result, the thread and the duration. Only KVM ioctls stop the program (a
seccomp filter hands exactly those to the tracer), so it runs as it would untraced; its output, signals
and exit status pass through. Durations come from the kernel's syscalls:sys_enter_ioctl/sys_exit_ioctl
tracepoints where tracefs is available, else from the tracer's own clock; the output says which.
-p PID traces a VMM that is already running instead (as strace -p: every system call of it then stops
twice while traced; it is let go, running, at Ctrl-C, SIGTERM or --timeout).

Then the set-up is replayed through the kernel model: what each kernel variant predicts for each
ioctl at this host's HZ and platform, which stalls the model explains, the whole set-up measured and
predicted, and the verdict as `minivmm timing` gives it.

Exit status: the program's own (128+N if signal N killed it); 0 when --until first-run ended it or
--detach left it running; 1 on --timeout; 2 for minivmm trace's own errors (bad usage, COMMAND not
runnable, ptrace or tracefs refused, an unwritable output file, nothing to save for --save-sequence, a
COMMAND that made no KVM ioctl); 4 if it made none because /dev/kvm is not accessible; 130/143 if
minivmm trace was interrupted/terminated. Ending the program means SIGTERM, then SIGKILL 5 s later."""


EXAMPLE = "minivmm trace -- qemu-system-x86_64 -enable-kvm ..."


def process_id(text: str) -> int:
    """A process ID: a whole number in (0, 2**22), the kernel's PID_MAX_LIMIT."""
    return int_range(1, (1 << 22) - 1)(text)


def trace(
    command: Annotated[list[str] | None, typer.Argument(
        metavar="-- COMMAND [ARGS...]", show_default=False, help="the program to trace, after --")] = None,
    until: Annotated[str, typer.Option(
        "--until", metavar="exit|first-run", parser=choice(("exit", "first-run"), "a stopping point"),
        help="stop when the program exits, or once every vCPU it created has entered KVM_RUN (first-run): then "
             "the program is ended with SIGTERM, or left running with --detach. A VMM started paused (QEMU -S) "
             "never enters KVM_RUN: add --timeout")] = "exit",
    detach: Annotated[bool, typer.Option(
        "--detach", help="with --until first-run: report and leave the program running, in a session of its own "
                         "(a background minivmm process keeps serving its KVM ioctls, since a seccomp filter "
                         "cannot be removed)")] = False,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", metavar="SECONDS", parser=float_range(0.001, 86400 * 365),
        help="end the program (SIGTERM, then SIGKILL 5 s later) after this long, or with -p let it go; exit "
             "status 1")] = None,
    pid: Annotated[int | None, typer.Option(
        "-p", "--pid", metavar="PID", parser=process_id,
        help="trace the running process PID (a VMM after boot: the ioeventfds a guest driver registers, say) "
             "instead of starting COMMAND; each of its system calls then stops twice, as under strace -p, until "
             "minivmm trace lets it go (Ctrl-C, SIGTERM, --timeout)")] = None,
    clock: Annotated[str, typer.Option(
        "--clock", metavar="auto|kernel|ptrace", parser=choice(("auto", "kernel", "ptrace"), "a clock"),
        help="where durations come from: the kernel's syscall tracepoints (kernel), the tracer's stops (ptrace), "
             "or kernel where tracefs is available (auto)")] = "auto",
    poll_us: Annotated[float, typer.Option(
        "--poll-us", metavar="US", parser=float_range(0, 10_000),
        help="after each KVM ioctl's stop, how long minivmm trace polls for the next before it sleeps: the "
             "traced program's calls cost less where idle CPUs halt (a VM host), for up to this much of the "
             "tracer's CPU time per stop; 0 sleeps at once")] = 50.0,
    as_json: Json = False,
    out_format: Format = None,
    output: ReportTo = None,
    save_sequence: Annotated[str | None, typer.Option(
        "--save-sequence", metavar="FILE",
        help="write the set-up as a sequence file, for `minivmm model --sequence FILE` and `minivmm timing "
             "--sequence FILE`")] = None,
    no_explain: Annotated[bool, typer.Option("--no-explain", help="only the trace, no model predictions")] = False,
    hz: HostHz = None,
    platform: HostPlatform = None,
    samples: Samples = 400,
) -> int:
    """Trace COMMAND's (or process PID's) KVM ioctls and explain its set-up (see DESCRIPTION)."""
    args = SimpleNamespace(**locals())  # locals() here: exactly the parameters
    args.command = command or []
    return run_command(run, args)


def _attach_target(pid: int) -> list[str]:
    """The command line of the process ``-p`` names; CliError if it cannot be traced."""
    if pid == os.getpid():
        raise CliError("-p: minivmm trace cannot trace itself")
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except FileNotFoundError:
        raise CliError(f"-p {pid}: no such process") from None
    except OSError as e:
        raise CliError(f"-p {pid}: cannot read its command line: {e.strerror}") from None
    if not argv:
        raise CliError(f"-p {pid}: a kernel thread or a process that is exiting: nothing to trace")
    return argv


def resolve_command(command: list[str]) -> tuple[str, list[str]]:
    """The executable's path and argv; CliError for no command, a missing or non-executable one."""
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("no COMMAND given. Usage: minivmm trace [OPTIONS] -- COMMAND [ARGS...]")
    name = command[0]
    if "/" in name:
        if not os.path.exists(name):
            raise CliError(f"COMMAND {name!r} does not exist")
        if os.path.isdir(name) or not os.access(name, os.X_OK):
            raise CliError(f"COMMAND {name!r} is not executable")
        return name, command
    found = shutil.which(name)
    if found is None:
        raise CliError(f"COMMAND {name!r} not found in PATH")
    return found, command


def run(args: SimpleNamespace) -> int:
    """Trace, explain, report; return the exit code (see the module docstring)."""
    if args.pid is not None:
        if [c for c in args.command if c != "--"]:
            raise CliError("-p PID traces a running process: give no COMMAND with it")
        if args.until != "exit" or args.detach:
            raise CliError("-p PID: the process is already running (--until first-run and --detach are for a "
                           "COMMAND minivmm trace starts)")
        path, argv = "", _attach_target(args.pid)
    else:
        path, argv = resolve_command(args.command)
    if args.detach and args.until != "first-run":
        raise CliError("--detach needs --until first-run (it says when to detach)")
    if args.as_json and args.out_format not in (None, "json"):
        raise CliError(f"--json and --format {args.out_format} contradict each other; give one")
    if args.out_format == "openmetrics":
        from minivmm.cli.gate_opts import check_metrics_available
        check_metrics_available()
    from minivmm.files import Output
    # Checked before the run (which may take long); written at the end, never through a link the traced
    # program may have planted meanwhile (Output checks the name again then).
    args.sequence_out = Output(args.save_sequence, "--save-sequence") if args.save_sequence is not None else None
    args.report_out = Output(args.output, "--output") if args.output is not None else None

    from minivmm.timing.pressure import LoadWindow
    from minivmm.trace.kclock import KernelClockUnavailable
    from minivmm.trace.syscalls import SpawnError
    from minivmm.trace.tracer import AttachError, PtraceDenied, Tracer, spawn_failure_message
    detach_pipe: list[int] = []
    load = LoadWindow.start()  # how busy the CPUs were while the program ran, for the report

    def on_detach(result: Any) -> None:
        code = _report(args, result, argv, load.end())
        _hand_back(detach_pipe, code)

    if args.detach:
        code = _fork_for_detach(detach_pipe)
        if code is not None:
            return code
    tracer = Tracer(path, argv, until_first_run=args.until == "first-run", detach=args.detach,
                    timeout_s=args.timeout, clock=args.clock, on_detach=on_detach if args.detach else None,
                    attach_pid=args.pid, on_start=_attached if args.pid is not None else None,
                    poll_ns=round(args.poll_us * 1000))
    try:
        result = tracer.run()
    except (PtraceDenied, AttachError) as e:
        raise CliError(str(e)) from None
    except KernelClockUnavailable as e:
        raise CliError(f"--clock kernel: {e} (use --clock auto to fall back to the tracer's clock)") from None
    except SpawnError as e:
        raise CliError(spawn_failure_message(e, argv[0])) from None
    if result.detached and not result.attached:
        os._exit(0)  # the background servicer: the tracee is gone, the report was given long ago
    if result.attached and result.detached:
        _note(f"let go of pid {result.pid}, which keeps running")
    return _report(args, result, argv, load.end())


def _attached(pid: int, threads: int) -> None:
    _note(f"attached to pid {pid} ({threads} thread{'s' if threads != 1 else ''}): each of its system calls now "
          "stops twice; Ctrl-C, SIGTERM or --timeout lets it go, running")


def _fork_for_detach(pipe: list[int]) -> int | None:
    """With --detach the tracer must outlive the command the shell waits for (a seccomp filter cannot be
    removed, so the VMM's KVM ioctls need a tracer for as long as it runs): the foreground process
    waits for the report's exit code on a pipe and returns it; the child traces."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()  # the terminal's Ctrl-C after we have handed back is the VMM's, not ours
        pipe.append(w)
        return None
    os.close(w)
    data = b""
    try:
        while chunk := os.read(r, 16):
            data += chunk
    finally:
        os.close(r)
    if data:
        return int(data.decode())
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else int(ExitCode.INTERRUPTED)


def _hand_back(pipe: list[int], code: int) -> None:
    """In the detached tracer: give the foreground its exit code and let go of the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    if pipe:
        os.write(pipe[0], str(code).encode())
        os.close(pipe[0])
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def _outcome_and_code(result: Any) -> tuple[str, int]:
    from minivmm.trace.tracer import StopReason
    if not result.events and result.stop_reason in (StopReason.EXITED, StopReason.FIRST_RUN):
        kvm_ok = os.access("/dev/kvm", os.R_OK | os.W_OK)
        return "no_kvm_ioctls", int(ExitCode.BAD_INPUT if kvm_ok else ExitCode.KVM_UNAVAILABLE)
    if result.detached and not result.attached:
        return "detached", int(ExitCode.OK)
    if result.stop_reason is StopReason.FIRST_RUN:
        return "first-run", int(ExitCode.OK)
    if result.stop_reason is StopReason.TIMEOUT:
        return "timeout", int(ExitCode.GUEST_FAILED)
    if result.stop_reason is StopReason.INTERRUPTED:
        return "interrupted", int(ExitCode.INTERRUPTED)
    if result.stop_reason is StopReason.TERMINATED:
        return "terminated", int(ExitCode.TERMINATED)
    if result.exit_signal is not None:
        return "killed", 128 + result.exit_signal
    return "exited", result.exit_code or 0


def _report(args: SimpleNamespace, result: Any, argv: list[str], load: Any = None) -> int:
    """Explain, write the sequence file(s) and the report; print the one-line notes; return the exit code.
    ``load`` (a :class:`minivmm.timing.pressure.Load`) is how busy the host was during the trace, if
    measured."""
    from minivmm.trace import report
    outcome, code = _outcome_and_code(result)
    exs: list[Any] = []
    note = ""
    host: dict[str, Any] = {}
    recorded: tuple[int, str] | None = None
    if result.events and not args.no_explain:
        exs, note, host, recorded, stopped = _explain(args, result)
        if stopped is not None:
            code = int(stopped)
    elif not result.events:
        note = "no KVM ioctls"
    if load is not None:
        host.update(load.to_json())
    if args.sequence_out is not None and recorded is None:
        from minivmm.host import read_host_info
        info = read_host_info()
        recorded = (info.hz, info.platform) if info.hz and info.platform else None
    if args.sequence_out is not None and not _save_sequences(args.sequence_out, result, exs, recorded, note):
        code = code or int(ExitCode.BAD_INPUT)
    fmt = args.out_format or ("json" if args.as_json else "text")

    def fill(out: Any) -> None:
        if fmt == "json":
            report.write_json(result, report.to_json(result, exs, note, outcome, code, host, ioctls=False), out)
        elif fmt == "openmetrics":
            from minivmm.compare.openmetrics import trace_openmetrics
            out.write(trace_openmetrics(report.to_json(result, exs, note, outcome, code, host, ioctls=False)))
        else:
            report.render_text(result, exs, note, out, load)

    if args.report_out is not None:
        args.report_out.write_text_from(fill)  # streamed into the file: a long trace is never held whole
    else:
        fill(sys.stdout)
        sys.stdout.flush()
    _closing_lines(args, result, argv, outcome, code, exs, note)
    return code


def _closing_lines(args: SimpleNamespace, result: Any, argv: list[str], outcome: str, code: int, exs: list[Any],
                   note: str) -> None:
    """The one-line notes and errors on stderr after the report: how the program ended, what was followed."""
    if outcome == "no_kvm_ioctls":
        status = (f"was killed by signal {result.exit_signal}" if result.exit_signal is not None
                  else f"ended with exit status {result.exit_code}")
        why = "" if code == ExitCode.BAD_INPUT else " (/dev/kvm is not accessible here)"
        _error_line(f"no KVM ioctls: {argv[0]!r} never issued one{why} (it {status})")
    elif outcome == "killed" and not result.ended_by_tracer:
        import signal as _signal
        _note(f"{argv[0]!r} was killed by {_signal.Signals(result.exit_signal).name}")
    if result.killed_after_grace:
        from minivmm.trace.tracer import TERM_GRACE_NS
        _note(f"{argv[0]!r} did not end within {TERM_GRACE_NS / 1e9:g} s of SIGTERM: it was killed (SIGKILL)")
    if result.forks or result.execs:
        kvm_pids = sorted({e.pid for e in result.events} - {result.pid})
        _note(f"{argv[0]!r} started {len(result.forks)} child process(es) and {len(result.execs)} exec(s); all were "
              "followed" + (f", and the KVM ioctls of pid {', '.join(map(str, kvm_pids))} are in the trace"
                            if kvm_pids else ""))
    if outcome == "timeout":
        _error_line(f"--timeout {args.timeout:g}s reached; {argv[0]!r} was ended"
              + ("" if result.events else " (it had issued no KVM ioctl)"))
    if exs == [] and note.startswith("explanation "):
        _note(note)


def _save_sequences(output: Any, result: Any, exs: list[Any], recorded: tuple[int, str] | None, note: str) -> bool:
    """--save-sequence: the VM whose vCPUs ran (or the only VM) to the file named, else every VM to a
    numbered name beside it (``setup.1.seq``, ``setup.2.seq``...); one line says what was written. False
    (and an error line) when nothing could be: a trace with no VM set-up is never a silent success."""
    from minivmm.files import FileRefused, Output, WriteFailed
    from minivmm.trace.explain import build_sequence, vms_of
    path = output.path
    vms = vms_of(result)
    if not vms:
        why = note or "no VM was created (no successful KVM_CREATE_VM)"
        _error_line(f"--save-sequence: nothing written to {path!r}: {why}")
        return False
    ran = [vm for vm in vms if vm.ran]
    chosen = ran if len(ran) == 1 else vms
    texts = {ex.vm.key: ex.sequence_text for ex in exs if ex.vm is not None}
    stem, ext = os.path.splitext(path)
    written = []
    for k, vm in enumerate(chosen, 1):
        text = texts.get(vm.key)
        try:
            if text is None:  # --no-explain, or no HZ/platform: the sequence needs no model
                text = build_sequence(result, vm=vm, host=recorded).sequence_text
            target = output if len(chosen) == 1 else Output(f"{stem}.{k}{ext}", "--save-sequence")
            target.write(text)
        except (ValueError, FileRefused, WriteFailed) as e:
            _error_line(f"--save-sequence: {vm.label} not written: {e}")
            continue
        written.append(f"{target.path} ({vm.label}, {vm.describe()})")
    if not written:
        return False
    left = [vm.label for vm in vms if vm not in chosen]
    _note("--save-sequence: wrote " + "; ".join(written)
          + (f"; not saved (their vCPUs did not run): {', '.join(left)}" if left else ""))
    return True


def _error_line(line: str) -> None:
    """An error that comes after the report (the report is still the answer): the CLI's one-line form."""
    try:
        sys.stderr.write(f"minivmm: error: {line}\n")
    except OSError:
        pass


def _note(line: str) -> None:
    try:
        sys.stderr.write(f"minivmm trace: {line}\n")
    except OSError:
        pass


class _Terminated(Exception):
    """SIGTERM while the explanation is computed."""


def _explain(args: SimpleNamespace, result: Any) -> tuple[list[Any], str, dict[str, Any], tuple[int, str] | None,
                                                        ExitCode | None]:
    """Every VM's explanation, or why there is none (a note, not an error: the trace itself is the
    answer); the traced host's HZ and platform (for a saved sequence); and the exit code to give if
    the user stopped the explanation (Ctrl-C, SIGTERM): the trace is then written without it."""
    import signal as _signal

    from minivmm.host import modelled_kernel, read_host_info, this_host
    from minivmm.progress import Working
    from minivmm.trace.explain import explain_all
    info = read_host_info()
    model = modelled_kernel(args.hz, args.platform, this_host(info))
    hz, plat = model.hz, model.platform
    recorded = (info.hz, info.platform) if info.hz and info.platform else None
    host = {"kernel": info.kernel, **model._asdict()}
    if hz is None:
        return [], "cannot read CONFIG_HZ (no /proc/config.gz or /boot/config-*); pass --hz", host, recorded, None

    if plat is None:
        return [], "cannot tell the KVM platform from /sys/module; pass --platform", host, recorded, None

    def terminated(_signum: int, _frame: Any) -> None:
        raise _Terminated

    old = _signal.signal(_signal.SIGTERM, terminated)
    try:
        with Working(f"explaining {len(result.events)} KVM ioctls with the kernel model"):  # stops on any exit
            exs = explain_all(result, hz, plat, samples=args.samples, host=recorded)
        return exs, "", host, recorded, None
    except KeyboardInterrupt:
        return ([], "explanation interrupted (Ctrl-C): the trace is written without it", host, recorded,
                ExitCode.INTERRUPTED)
    except _Terminated:
        return ([], "explanation interrupted (SIGTERM): the trace is written without it", host, recorded,
                ExitCode.TERMINATED)
    except ValueError as e:
        return [], str(e), host, recorded, None
    except (MemoryError, RecursionError) as e:
        return ([], f"explanation failed ({type(e).__name__}): the trace is written without it", host, recorded,
                None)
    finally:
        _signal.signal(_signal.SIGTERM, old)


COMMAND = Command("trace", trace, DESCRIPTION,
                  "trace and explain the KVM set-up of any VMM (QEMU, Firecracker, ...)",
                  interspersed=False)
