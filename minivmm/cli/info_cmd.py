"""``minivmm info``: what the host's KVM offers."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from minivmm.cli.app import Command, run_command
from minivmm.cli.options import DEFAULT_KVM, Json, Kvm, ReportTo

HELP = ("Show the KVM API version, the capabilities minivmm uses, the KVM backend (intel, amd, pvm ...), "
        "CONFIG_HZ and the Tree SRCU parameters: the facts that decide ioctl latencies. A missing /dev/kvm is "
        "reported, not an error.")


def info(as_json: Json = False, kvm_path: Kvm = DEFAULT_KVM, output: ReportTo = None) -> int:
    """Print the host's KVM facts (see HELP)."""
    return run_command(run, SimpleNamespace(as_json=as_json, kvm_path=kvm_path), output=output)


def run(args: SimpleNamespace) -> int:
    """Print the host's KVM facts."""
    import json

    from minivmm.host import read_host_info

    host = read_host_info(args.kvm_path)
    if args.as_json:
        from minivmm.schemas import stamp
        json.dump(stamp("info", host.to_json()), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    w = sys.stdout.write
    w(f"kernel        {host.kernel} ({host.machine})\n")
    if host.kvm_error:
        w(f"kvm           unavailable: {host.kvm_error}\n")
    else:
        w(f"kvm           {host.kvm_path}, API version {host.api_version}\n")
    backend = host.backend_module or "none found in /sys/module"
    w(f"backend       {backend}" + (f" (platform {host.platform})" if host.platform else "") + "\n")
    hz = f"{host.hz} (from {host.hz_source})" if host.hz else "unknown (no readable kernel config)"
    w(f"CONFIG_HZ     {hz}\n")
    if host.tree_srcu is not None:
        w(f"TREE_SRCU     {'yes' if host.tree_srcu else 'no'}\n")
    if host.capabilities:
        w("capabilities\n")
        for name, value in host.capabilities.items():
            w(f"  {name:<32} {value}\n")
    if host.srcutree_params:
        w("srcutree parameters (/sys/module/srcutree/parameters)\n")
        for name, param in host.srcutree_params.items():
            w(f"  {name:<32} {param}\n")
    return 0


COMMAND = Command("info", info, HELP,
                  "what the host's KVM offers (API, capabilities, backend, CONFIG_HZ)")
