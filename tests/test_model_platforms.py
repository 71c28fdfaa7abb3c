"""The default timing sequence per platform: the one whose call_srcu stall the platform shows."""

from __future__ import annotations

import pytest

from kernel_model.platforms import PLATFORMS, default_sequence
from kernel_model.predict import predict
from kernel_model.sequences import load_sequence
from kernel_model.stats import is_stall


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_the_default_sequence_shows_the_stall_on_every_platform(platform):
    seq = load_sequence(default_sequence(platform))
    pred = predict(seq, "call_srcu", 250, platform, samples=50, seed=1)
    stalled = [sp.step.label for sp in pred.steps if is_stall(sp.stats()["p50"] * 1000)]
    assert stalled, f"{seq.name} has no stall under call_srcu on {platform}"
    if PLATFORMS[platform].apic_access_memslot_on_first_vcpu:
        assert seq.name == "firecracker" and stalled == ["KVM_CREATE_VCPU, 0"]
    else:
        assert seq.name == "registrations-first"


def test_an_unknown_platform_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown platform 'nope'"):
        default_sequence("nope")
