"""What the host offers: KVM API and capabilities, the KVM backend module, CONFIG_HZ, kernel, SRCU knobs.

Read from the kernel's own interfaces (ioctls, /sys/module, /proc/config.gz, /boot/config-*), each
source named in the result so that a reader can check it.
"""

from __future__ import annotations

import gzip
import os
import re
from typing import Any, NamedTuple

from minivmm.files import RESOURCE_ERRNOS
from minivmm.kvm.errors import KvmUnavailable
from minivmm.kvm.paths import DEFAULT_DEVICE_PATH
from minivmm.kvm.system import Kvm
from minivmm.kvm.uapi import lib

#: The capabilities minivmm relies on, by the name the header gives them.
CAPS_USED = ("KVM_CAP_USER_MEMORY", "KVM_CAP_IOEVENTFD", "KVM_CAP_IOEVENTFD_ANY_LENGTH", "KVM_CAP_IRQCHIP",
             "KVM_CAP_IMMEDIATE_EXIT", "KVM_CAP_SET_TSS_ADDR", "KVM_CAP_EXT_CPUID", "KVM_CAP_NR_MEMSLOTS",
             "KVM_CAP_NR_VCPUS", "KVM_CAP_MAX_VCPUS", "KVM_CAP_INTERNAL_ERROR_DATA")

#: kvm_amd's resolved ``avic`` module parameter.
SVM_AVIC_PARAM = "/sys/module/kvm_amd/parameters/avic"


def svm_avic_enabled(param: str = SVM_AVIC_PARAM) -> bool:
    """Whether kvm_amd runs with AVIC (the resolved ``avic`` module parameter reads Y or 1); an
    unreadable parameter counts as enabled, the 6.18 default on Zen4+ with x2AVIC."""
    try:
        with open(param) as f:
            return f.read().strip() not in ("N", "0")
    except OSError:
        return True


#: Backend module (as in /sys/module) -> the platform name the kernel model uses.
BACKENDS = {"kvm_intel": "vmx", "kvm_amd": "svm", "kvm_pvm": "pvm", "kvm_arm": "arm64"}

SRCUTREE_PARAMS = "/sys/module/srcutree/parameters"


class HostInfo(NamedTuple):
    """A snapshot of the host's KVM facts; fields are None where they could not be read."""

    kernel: str
    machine: str
    kvm_path: str
    api_version: int | None = None
    kvm_error: str | None = None
    capabilities: dict[str, int] = {}  # noqa: RUF012  # never mutated: read_host_info builds a new dict
    backend_module: str | None = None
    platform: str | None = None
    hz: int | None = None
    hz_source: str | None = None
    tree_srcu: bool | None = None
    srcutree_params: dict[str, str] = {}  # noqa: RUF012  # likewise

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return self._asdict()


def kernel_config(release: str | None = None) -> tuple[str | None, str | None]:
    """Return (config text, where it came from) from /proc/config.gz or /boot/config-RELEASE."""
    release = release or os.uname().release
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read(), "/proc/config.gz"
    except OSError as e:
        _raise_if_out_of_resources(e)
    path = f"/boot/config-{release}"
    try:
        with open(path) as f:
            return f.read(), path
    except OSError as e:
        _raise_if_out_of_resources(e)
        return None, None


def _raise_if_out_of_resources(e: OSError) -> None:
    """A fact that cannot be read because the process is out of file descriptors or memory is not
    missing from the host: that error goes up, for the command line to name the limit."""
    if e.errno in RESOURCE_ERRNOS:
        raise e


def config_values(names: tuple[str, ...], release: str | None = None) -> dict[str, str]:
    """The values of some ``CONFIG_*`` options, reading the kernel config only as far as needed.

    ``minivmm boot`` asks for CONFIG_HZ on every run: decompressing all of /proc/config.gz for it
    costs milliseconds; CONFIG_HZ sits in its first eighth.
    """
    return _config_values_and_source(names, release)[0]


def _config_values_and_source(names: tuple[str, ...], release: str | None = None) -> tuple[dict[str, str], str | None]:
    """:func:`config_values`, and the file they were read from (None if no config could be read)."""
    release = release or os.uname().release
    wanted = {f"{n}=": n for n in names}
    found: dict[str, str] = {}
    for opener, path in ((gzip.open, "/proc/config.gz"), (open, f"/boot/config-{release}")):
        try:
            with opener(path, "rt") as f:
                for line in f:
                    key = line[:line.find("=") + 1]
                    if key in wanted:
                        found[wanted[key]] = line[len(key):].rstrip("\n")
                        if len(found) == len(wanted):
                            break
            return found, path
        except OSError as e:
            _raise_if_out_of_resources(e)
            continue
    return found, None


def config_value(config: str, name: str) -> str | None:
    """The value of ``CONFIG_NAME`` in a kernel config, or None if unset."""
    m = re.search(rf"^{re.escape(name)}=(.*)$", config, re.M)
    return m.group(1) if m else None


def detect_backend(sys_module: str = "/sys/module") -> str | None:
    """The loaded KVM backend module (kvm_intel, kvm_amd, kvm_pvm, ...), or None."""
    for module in BACKENDS:
        if os.path.isdir(os.path.join(sys_module, module)):
            return module
    return None


def read_host_info(kvm_path: str = DEFAULT_DEVICE_PATH) -> HostInfo:
    """Gather everything ``minivmm info`` shows. Never raises for a missing /dev/kvm: it says so."""
    api_version = kvm_error = hz_source = None
    hz: int | None = None
    tree_srcu: bool | None = None
    capabilities: dict[str, int] = {}
    try:
        with Kvm(kvm_path) as kvm:
            api_version = kvm.get_api_version()
            for name in CAPS_USED:
                if hasattr(lib, name):
                    capabilities[name] = kvm.check_extension(getattr(lib, name))
    except KvmUnavailable as e:
        _raise_if_out_of_resources(e)
        kvm_error = e.strerror
    platform, backend_module = host_platform()
    config, source = kernel_config()
    if config:
        hz_text = config_value(config, "CONFIG_HZ")
        hz = int(hz_text) if hz_text and hz_text.isdigit() else None
        hz_source = source
        tree_srcu = config_value(config, "CONFIG_TREE_SRCU") == "y"
    srcutree_params: dict[str, str] = {}
    if os.path.isdir(SRCUTREE_PARAMS):
        for name in sorted(os.listdir(SRCUTREE_PARAMS)):
            try:
                with open(os.path.join(SRCUTREE_PARAMS, name)) as f:
                    srcutree_params[name] = f.read().strip()
            except OSError:
                continue
    return HostInfo(os.uname().release, os.uname().machine, kvm_path, api_version, kvm_error, capabilities,
                    backend_module, platform, hz, hz_source, tree_srcu, srcutree_params)


def host_platform() -> tuple[str | None, str | None]:
    """The kernel model's name for this host's KVM platform, and the module that says so: the loaded
    backend (kvm_amd without AVIC is ``svm-noavic``), or ``arm64`` where an arm64 machine has /sys/module/kvm;
    (None, None) where no KVM module is loaded."""
    backend = detect_backend()
    if backend:
        platform = BACKENDS[backend]
        return ("svm-noavic" if platform == "svm" and not svm_avic_enabled() else platform), backend
    if os.uname().machine in ("aarch64", "arm64") and os.path.isdir("/sys/module/kvm"):
        return "arm64", None
    return None, None


def host_hz() -> tuple[int | None, str | None]:
    """This host's CONFIG_HZ and the file it was read from, reading the config only as far as needed."""
    values, source = _config_values_and_source(("CONFIG_HZ",))
    text = values.get("CONFIG_HZ")
    return (int(text), source) if text and text.isdigit() else (None, None)


class ModelledKernel(NamedTuple):
    """The HZ and platform the kernel model runs at, and where each came from, in words the output
    shows: ``--hz``, ``/proc/config.gz``, ``kvm_intel loaded``, ``the sequence file's host line``, or
    ``fallback: ...`` (None: not known)."""

    hz: int | None
    hz_source: str | None
    platform: str | None
    platform_source: str | None

    @property
    def fallback(self) -> bool:
        """Whether a fallback stood in for a fact the host did not give."""
        return any(s is not None and s.startswith("fallback") for s in (self.hz_source, self.platform_source))


class KernelSource(NamedTuple):
    """A place the model's HZ and platform may come from when no option gives them: the values it has
    (None: it does not know that one) and the words the output names each by."""

    hz: int | None
    hz_source: str
    platform: str | None
    platform_source: str


def this_host(host: HostInfo | None = None) -> KernelSource:
    """This host's CONFIG_HZ (from its kernel config) and KVM platform (from the loaded module), from
    ``host`` when the caller has read it already, else read now (only as far as needed)."""
    hz, hz_file = (host.hz, host.hz_source) if host is not None else host_hz()
    platform, module = (host.platform, host.backend_module) if host is not None else host_platform()
    return KernelSource(hz, hz_file or "the kernel config", platform, f"{module or 'kvm'} loaded")


def recorded_host(hz: int | None, platform: str | None) -> KernelSource:
    """The host a sequence file says it was recorded on (its ``host hz=N platform=NAME`` line, which
    ``minivmm trace --save-sequence`` writes)."""
    return KernelSource(hz, "the sequence file's host line", platform, "the sequence file's host line")


def fallback(hz: int, platform: str) -> KernelSource:
    """A stand-in for the HZ and platform this host did not give, named as a fallback in the output."""
    return KernelSource(hz, "fallback: CONFIG_HZ unreadable (no /proc/config.gz or /boot/config-*)",
                        platform, "fallback: no KVM module loaded (/sys/module)")


def modelled_kernel(hz: int | None, platform: str | None, *defaults: KernelSource) -> ModelledKernel:
    """The one rule for the HZ and platform the model runs at (every command, and the differential
    harness): an option given wins; else, for each of the two, the first of ``defaults`` that has it
    (e.g. :func:`this_host` then a :func:`fallback`; :func:`recorded_host` then the published report's
    kernel), with its source named; else None, for the caller to say what to pass."""
    hz_source = "--hz" if hz is not None else None
    platform_source = "--platform" if platform is not None else None
    for default in defaults:
        if hz is None and default.hz is not None:
            hz, hz_source = default.hz, default.hz_source
        if platform is None and default.platform is not None:
            platform, platform_source = default.platform, default.platform_source
    return ModelledKernel(hz, hz_source, platform, platform_source)
