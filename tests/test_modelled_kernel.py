"""The one rule for the HZ and platform the kernel model runs at (boot's shadow, timing, trace)."""

from __future__ import annotations

import pytest

from minivmm import host


@pytest.fixture
def host_facts(monkeypatch):
    """Set what this host's kernel config and KVM module say (None: unreadable)."""
    def facts(hz, platform):
        monkeypatch.setattr(host, "host_hz", lambda: (hz, "/boot/config-test" if hz else None))
        monkeypatch.setattr(host, "host_platform", lambda: (platform, "kvm_intel" if platform else None))
    return facts


def test_options_win_over_the_host(host_facts):
    host_facts(300, "vmx")
    assert host.modelled_kernel(100, "pvm") == (100, "--hz", "pvm", "--platform")


def test_the_host_when_no_option_is_given_with_where_each_came_from(host_facts):
    host_facts(300, "vmx")
    model = host.modelled_kernel(None, None, fallback=(250, "pvm"))
    assert model == (300, "/boot/config-test", "vmx", "kvm_intel loaded") and not model.fallback


def test_a_fallback_is_named_as_one_and_only_where_a_caller_has_one(host_facts):
    host_facts(None, None)
    model = host.modelled_kernel(None, None, fallback=(250, "pvm"))
    assert (model.hz, model.platform) == (250, "pvm") and model.fallback
    assert model.hz_source.startswith("fallback: CONFIG_HZ unreadable")
    assert model.platform_source.startswith("fallback: no KVM module")
    assert host.modelled_kernel(None, None) == (None, None, None, None)  # the caller says what to pass


def test_read_host_facts_are_used_as_they_are(host_facts):
    host_facts(None, None)  # never consulted when the caller has read the host already
    info = host.HostInfo("6.18", "x86_64", "/dev/kvm", platform="svm-noavic", backend_module="kvm_amd", hz=1000,
                         hz_source="/proc/config.gz")
    assert host.modelled_kernel(None, None, host=info) == (1000, "/proc/config.gz", "svm-noavic", "kvm_amd loaded")
