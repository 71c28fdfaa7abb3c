"""``minivmm info``: what the host's KVM offers."""

from __future__ import annotations

import argparse
import sys

from minivmm.kvm.paths import DEFAULT_DEVICE_PATH


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``info`` command."""
    p = subparsers.add_parser(
        "info", help="what the host's KVM offers (API, capabilities, backend, CONFIG_HZ)",
        description="Show the KVM API version, the capabilities minivmm uses, the KVM backend (intel, amd, "
                    "pvm ...), CONFIG_HZ and the Tree SRCU parameters: the facts that decide ioctl "
                    "latencies. Always exits 0: a missing /dev/kvm is reported, not an error.")
    p.add_argument("--json", dest="as_json", action="store_true", help="print one JSON object")
    p.add_argument("--kvm", dest="kvm_path", default=DEFAULT_DEVICE_PATH, metavar="PATH",
                   help="the KVM device to open (default: /dev/kvm)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
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

