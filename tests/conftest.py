"""Shared fixtures. Tests marked ``kvm`` are skipped, with the reason, where /dev/kvm cannot be used."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from minivmm.kvm.paths import DEFAULT_DEVICE_PATH
from minivmm.timing.pressure import Load

# numpy (imported by the plot tests, through matplotlib) starts OpenBLAS worker threads that block no
# signal. A test that blocks a signal in its own threads and sends it to the process (test_lifecycle)
# then has it delivered to one of them, and the process dies of it. One BLAS thread starts none.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Above this CPU pressure (the share of the wall time some task waited for a CPU, /proc/pressure/cpu), a
#: test comparing tick-slip shares between two programs, or between the host and the model, is outside
#: what it claims: each program's overhead, and load the model does not model, decide those shares.
QUIET_PRESSURE_PERCENT = 5.0
#: Above this 1-minute load average, less the tasks the test itself keeps running, other tasks competed.
QUIET_OTHER_TASKS = 0.5


def quiet_host(load: Load, own_tasks: int = 1) -> bool:
    """Whether nothing but the test ran while it measured (the one rule of every quiet-host claim): CPU
    pressure at most QUIET_PRESSURE_PERCENT, and the load average, less the ``own_tasks`` the test keeps
    running, at most QUIET_OTHER_TASKS. A host that cannot say (no PSI, no load average) counts as quiet:
    the claim is then tested, not skipped."""
    pressure = load.cpu_pressure_pct or 0.0
    others = load.load_average[0] - own_tasks if load.load_average else 0.0
    return pressure <= QUIET_PRESSURE_PERCENT and others <= QUIET_OTHER_TASKS
GUEST = ROOT / "guest"


def _kvm_unusable_reason(path: str = DEFAULT_DEVICE_PATH) -> str | None:
    if not os.path.exists(path):
        return f"{path} does not exist"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not readable and writable by this user"
    try:
        from minivmm.kvm import Kvm, KvmUnavailable
        try:
            Kvm(path).close()
        except KvmUnavailable as e:
            return e.strerror
    except ImportError:  # the compiled bindings are missing: that is a build failure, not a skip
        raise
    return None


KVM_SKIP_REASON = _kvm_unusable_reason()


def _tracefs_unusable_reason() -> str | None:
    """Why the ``tracefs``-marked tests cannot run here (None: they can): a private instance with the
    timer tracepoints the tick trace records."""
    if os.geteuid() != 0:
        return "tracefs needs root"
    from minivmm.timing import ticktrace
    from minivmm.tracefs import Session, TracefsUnavailable
    try:
        with Session.open() as session:
            inst = session.instance("probe")
            missing = [e for e in (ticktrace.HRTIMER, ticktrace.TICK_STOP, ticktrace.TIMER_START,
                                   ticktrace.TIMER_EXPIRE) if not inst.has_event(e)]
            if missing:
                return f"no {', '.join(missing)} tracepoint"
    except (TracefsUnavailable, OSError) as e:
        return str(e)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every ``kvm``-marked test where /dev/kvm is unusable, and every ``tracefs``-marked one where
    tracefs is (asked only when such a test was collected)."""
    if KVM_SKIP_REASON is not None:
        skip = pytest.mark.skip(reason=f"needs /dev/kvm: {KVM_SKIP_REASON}")
        for item in items:
            if "kvm" in item.keywords:
                item.add_marker(skip)
    traced = [item for item in items if "tracefs" in item.keywords]
    if traced:
        reason = _tracefs_unusable_reason()
        if reason is not None:
            for item in traced:
                item.add_marker(pytest.mark.skip(reason=f"needs tracefs: {reason}"))


@pytest.fixture
def guest_image():
    """Return the bytes of ``guest/NAME.bin``."""
    def load(name: str) -> bytes:
        return (GUEST / f"{name}.bin").read_bytes()
    return load


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m minivmm ARGS`` in a subprocess (as a user would) and capture its output."""
    return subprocess.run([sys.executable, "-m", "minivmm", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


class ExitLog:
    """An ``on_exit`` hook that records (vcpu, exit) pairs, for exit-sequence assertions."""

    def __init__(self) -> None:
        import threading
        self._lock = threading.Lock()
        self.entries: list[tuple[int, object]] = []

    def __call__(self, vcpu, exit_) -> None:
        with self._lock:
            self.entries.append((vcpu.id, exit_))

    def of(self, vcpu_id: int) -> list[object]:
        """The exits of one vCPU, in order."""
        return [e for v, e in self.entries if v == vcpu_id]


@pytest.fixture
def boot():
    """Boot an image in-process: ``boot(image_bytes, mode=..., vcpus=..., ...) -> (RunReport, ExitLog)``."""
    def run(image: bytes, **config):
        from minivmm.devices.console import Console
        from minivmm.vmm.machine import Machine, MachineConfig
        log = ExitLog()
        with Machine(MachineConfig(**config), image, Console()) as machine:
            report = machine.run(on_exit=log)
        return report, log
    return run


# Hypothesis: derandomized (a fixed seed) in CI, so a CI run is repeatable; random locally.
from hypothesis import settings as _hsettings  # noqa: E402

_hsettings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _hsettings.load_profile("ci")


@pytest.fixture(scope="session")
def trace_prog(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/trace_prog.c (a known KVM set-up: a VM, N ioeventfds, then a memslot), statically linked;
    the test is skipped where it cannot be built."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the static test program")
    out = tmp_path_factory.mktemp("trace") / "trace_prog"
    proc = subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(ROOT / "tests" / "trace_prog.c")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"gcc -static failed (no static libc?): {proc.stderr.strip()[:200]}")
    return str(out)
