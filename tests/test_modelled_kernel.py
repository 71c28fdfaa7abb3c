"""The one rule for the HZ and platform the kernel model runs at (boot's shadow, timing, trace, repro,
model, the differential harness): an option, else each default in the caller's order, each value named
by where it came from."""

from __future__ import annotations

import pytest
from conftest import run_cli

from minivmm import host


@pytest.fixture
def host_facts(monkeypatch):
    """Set what this host's kernel config and KVM module say (None: unreadable)."""
    def facts(hz, platform):
        monkeypatch.setattr(host, "host_hz", lambda: (hz, "/boot/config-test" if hz else None))
        monkeypatch.setattr(host, "host_platform", lambda: (platform, "kvm_intel" if platform else None))
    return facts


def test_options_win_over_every_default(host_facts):
    host_facts(300, "vmx")
    assert host.modelled_kernel(100, "pvm", host.this_host(), host.fallback(250, "svm")) == (
        100, "--hz", "pvm", "--platform")


def test_the_host_when_no_option_is_given_with_where_each_came_from(host_facts):
    host_facts(300, "vmx")
    model = host.modelled_kernel(None, None, host.this_host(), host.fallback(250, "pvm"))
    assert model == (300, "/boot/config-test", "vmx", "kvm_intel loaded") and not model.fallback


def test_a_fallback_is_named_as_one_and_only_where_a_caller_has_one(host_facts):
    host_facts(None, None)
    model = host.modelled_kernel(None, None, host.this_host(), host.fallback(250, "pvm"))
    assert (model.hz, model.platform) == (250, "pvm") and model.fallback
    assert model.hz_source.startswith("fallback: CONFIG_HZ unreadable")
    assert model.platform_source.startswith("fallback: no KVM module")
    assert host.modelled_kernel(None, None, host.this_host()) == (None, None, None, None)  # the caller says


def test_each_value_comes_from_the_first_default_that_has_it(host_facts):
    host_facts(None, "svm")  # the config unreadable, the module loaded
    model = host.modelled_kernel(None, None, host.this_host(), host.fallback(250, "pvm"))
    assert model == (250, model.hz_source, "svm", "kvm_intel loaded") and model.fallback
    recorded = host.recorded_host(1000, None)  # a host line may name one of the two
    model = host.modelled_kernel(None, None, recorded, host.KernelSource(100, "published", "vmx", "published"))
    assert model == (1000, "the sequence file's host line", "vmx", "published")


def test_read_host_facts_are_used_as_they_are(host_facts):
    host_facts(None, None)  # never consulted when the caller has read the host already
    info = host.HostInfo("6.18", "x86_64", "/dev/kvm", platform="svm-noavic", backend_module="kvm_amd", hz=1000,
                         hz_source="/proc/config.gz")
    assert host.modelled_kernel(None, None, host.this_host(info)) == (
        1000, "/proc/config.gz", "svm-noavic", "kvm_amd loaded")


@pytest.mark.parametrize("host_line,options,said", [
    ("", [], "HZ=100 (the published report's kernel), platform vmx (the published report's kernel)"),
    ("host hz=250 platform=pvm\n", [], "HZ=250 (the sequence file's host line), platform pvm (the sequence "
                                       "file's host line)"),
    ("host hz=250 platform=pvm\n", ["--hz", "1000"], "HZ=1000 (--hz), platform pvm (the sequence file's host "
                                                     "line)"),
    ("host hz=250\n", ["--platform", "svm"], "HZ=250 (the sequence file's host line), platform svm (--platform)"),
])
def test_model_says_where_its_hz_and_platform_came_from(tmp_path, host_line, options, said):
    """model's defaults, a saved sequence's host line then the published report's kernel, go through the
    same rule, and both the text and the JSON name each value's source."""
    path = tmp_path / "s.seq"
    path.write_text(f"{host_line}create_vm\nmemslot slot=0 base=0 size=2M\nvcpu id=0\n")
    proc = run_cli("model", "-s", str(path), "-n", "10", "-v", "call_srcu", *options)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1] == said
    import json
    doc = json.loads(run_cli("model", "-s", str(path), "-n", "10", "-v", "call_srcu", "--json", *options).stdout)
    assert f"HZ={doc['hz']} ({doc['hz_source']}), platform {doc['platform']} ({doc['platform_source']})" == said
