"""The verdict from likelihoods (minivmm.timing.verdict): only the steps where the variants differ count,
its strength is a posterior, "cannot tell apart" names the step that would separate, and one trace and
a timing run go through the same code. No KVM needed: samples come from the model or a recorded trace."""

from __future__ import annotations

import functools
import json
import math
import random

import pytest
from conftest import ROOT

from kernel_model.predict import predict
from kernel_model.sequences import SEQUENCES, parse_sequence
from kernel_model.variants import MAIN_VARIANTS
from minivmm.timing.noise import DEFAULT, NoiseModel, StudentT, fit, fit_t
from minivmm.timing.verdict import (
    TIE_LLR,
    Measured,
    Predictive,
    cdf_distance,
    discriminating_steps,
    judge,
    log_likelihood,
    separating_named_step,
    step_fit,
)

NOISE = NoiseModel(StudentT(0.0, 0.2, 3), StudentT(0.0, 0.1, 3), "test")
# Noise models around the shipped default: the verdicts below must not hang on its exact figures.
NOISES = [DEFAULT, NoiseModel(StudentT(0.0, 0.15, 5), StudentT(0.0, 0.05, 5), "narrow"),
          NoiseModel(StudentT(-0.5, 0.8, 30), StudentT(0.0, 0.2, 2), "wide, shifted")]


def ops(seq):
    return [s.op for s in seq.steps]


def predictions(seq, hz=250, platform="pvm", samples=300):
    return {v: [sp.durations for sp in predict(seq, v, hz, platform, samples=samples).steps] for v in MAIN_VARIANTS}


def t_draw(rng: random.Random, t: StudentT) -> float:
    """One draw of ``t`` (a normal over the root of a chi-square by its degrees of freedom)."""
    chi2 = sum(rng.gauss(0, 1) ** 2 for _ in range(t.df))
    return t.location + t.scale * rng.gauss(0, 1) / math.sqrt(chi2 / t.df)


def draw(predicted: list[list[int]], n: int, noise: NoiseModel, seed: int = 0) -> list[list[int]]:
    """``n`` samples per step from a variant's prediction: one bias per step, a scatter per sample."""
    rng = random.Random(seed)
    out = []
    for ds in predicted:
        bias = t_draw(rng, noise.bias)
        out.append([int(rng.choice(ds) * math.exp(bias + t_draw(rng, noise.scatter))) for _ in range(n)])
    return out


def test_the_variant_the_samples_come_from_is_named_with_its_posterior():
    pred = predictions(SEQUENCES["registrations-first"])
    for truth in ("call_srcu", "call_srcu_expedited"):
        v = judge(draw(pred[truth], 30, NOISE, seed=1), pred, NOISE, ops=ops(SEQUENCES["registrations-first"]))
        assert v.variant == truth and v.matches_well and v.best == truth
        assert v.posterior[truth] > 0.999 and abs(sum(v.posterior.values()) - 1) < 1e-9
        assert v.llr_to_runner_up is not None and v.llr_to_runner_up > TIE_LLR


def test_one_sample_per_step_goes_through_the_same_code():
    pred = predictions(SEQUENCES["registrations-first"])
    v = judge(draw(pred["call_srcu"], 1, NOISE, seed=2), pred, NOISE)
    assert v.samples_per_step == 1 and v.best == "call_srcu"


def test_steps_where_the_variants_agree_count_for_nothing():
    pred = predictions(SEQUENCES["registrations-first"])
    measured = draw(pred["call_srcu"], 20, NOISE, seed=3)
    v = judge(measured, pred, NOISE)
    create_vm = 0  # every variant predicts KVM_CREATE_VM the same
    assert create_vm not in v.discriminating
    wild = [list(s) for s in measured]
    wild[create_vm] = [x * 50 for x in wild[create_vm]]  # a VM creation 50 times slower than predicted
    w = judge(wild, pred, NOISE)
    assert {vf.variant: vf.log_likelihood for vf in w.variants} == {vf.variant: vf.log_likelihood for vf in v.variants}


def test_the_same_prediction_is_not_discriminating_and_different_ones_are():
    a = Predictive([1000] * 10, NOISE)
    assert cdf_distance(a, Predictive([1000] * 5, NOISE)) == 0
    assert cdf_distance(a, Predictive([20_000] * 10, NOISE)) > 0.99
    assert discriminating_steps({"x": [a, a], "y": [a, Predictive([20_000], NOISE)]}) == [1]


def test_log_likelihood_and_fit_of_measured_samples():
    p = Predictive([10_000], NOISE)
    near, far = Measured.of([10_000], NOISE), Measured.of([1_000_000], NOISE)
    assert log_likelihood(near, p) > log_likelihood(far, p) + 10
    assert step_fit(near, p, 0.01).fits and not step_fit(far, p, 0.01).fits
    # Many samples: one bias for all of them, so a hundred samples 20% slow fit (a cost the model has
    # wrong), and a hundred samples 100 times slow do not.
    slow = Measured.of([12_000 + 10 * i for i in range(100)], NOISE)
    assert step_fit(slow, p, 0.01).fits and step_fit(slow, p, 0.01).bias == pytest.approx(math.log(1.2), abs=0.05)
    assert not step_fit(Measured.of([1_000_000 + i for i in range(100)], NOISE), p, 0.01).fits
    # The bias saturates: a hundred samples are not a hundred times the evidence of one.
    one, many = Measured.of([12_500], NOISE), Measured.of([12_500] * 100, NOISE)
    q = Predictive([10_000], NOISE)
    assert abs(log_likelihood(many, q) - log_likelihood(many, p)) < 1e-9  # same prediction
    r = Predictive([15_000], NOISE)
    gap_one = log_likelihood(one, p) - log_likelihood(one, r)
    gap_many = log_likelihood(many, p) - log_likelihood(many, r)
    assert abs(gap_many) < 10 * abs(gap_one) + 1


def test_a_sequence_that_cannot_separate_two_variants_says_so_and_names_one_that_does():
    # registrations-first creates no vCPU before its registrations: sync and created_vcpus (which
    # differ only once a vCPU exists) predict the same for every step.
    seq = SEQUENCES["registrations-first"]
    pred = predictions(seq)
    measured = draw(pred["sync"], 30, NOISE, seed=4)
    v = judge(measured, pred, NOISE, ops=ops(seq))
    assert {v.best, *v.ties} == {"sync", "created_vcpus"} and v.separation is None
    sep = separating_named_step(v.best, v.ties[0], 250, "pvm", NOISE, samples=100)
    assert sep is not None and not sep.in_this_sequence and sep.divergence > 1
    v.separation = sep
    text = _text(v, measured, pred)
    assert "cannot tell" in text and f"in the {sep.sequence} sequence" in text and sep.label in text


def test_a_variant_far_from_every_sample_does_not_fit():
    pred = predictions(SEQUENCES["registrations-first"])
    v = judge(draw(pred["call_srcu"], 30, NOISE, seed=5), pred, NOISE)
    sync = next(vf for vf in v.variants if vf.variant == "sync")
    assert not sync.fits and sync.misses


def test_nothing_matches_when_the_best_misses_a_step_another_variant_explains():
    pred = predictions(SEQUENCES["registrations-first"])
    measured = draw(pred["call_srcu"], 30, NOISE, seed=6)
    memslot = next(i for i, s in enumerate(SEQUENCES["registrations-first"].steps) if s.op == "memslot")
    ioeventfds = [i for i, s in enumerate(SEQUENCES["registrations-first"].steps) if s.op == "ioeventfd"]
    # The registrations as sync predicts them (a synchronize each), the memslot as call_srcu's stall:
    # no variant predicts both, and each one misses steps another explains.
    sync_like = draw(pred["sync"], 30, NOISE, seed=7)
    for i in ioeventfds:
        measured[i] = sync_like[i]
    assert pred["sync"][memslot] != pred["call_srcu"][memslot]
    v = judge(measured, pred, NOISE)
    assert not v.matches_well and v.variant is None and "No kernel variant matches" in _text(v, measured, pred)


def _text(v, measured, pred):
    from minivmm.timing.verdict import describe
    return describe(v, measured, {k: [sorted(d)[len(d) // 2] / 1000 for d in ds] for k, ds in pred.items()})


@functools.lru_cache(maxsize=1)
def qemu_trace():
    """The recorded QEMU trace's explanation, its sequence, and every variant's predictions of it."""
    doc = json.loads((ROOT / "tests" / "data" / "qemu-trace-explanation.json").read_text())
    seq = parse_sequence(doc["sequence_text"], "qemu")
    return doc, seq, predictions(seq, doc["hz"], doc["platform"], samples=200)


@pytest.mark.parametrize("noise", NOISES, ids=lambda n: n.source.split(":")[0])
def test_the_qemu_trace_names_call_srcu_with_its_strength_and_expedited_is_no_tie(noise):
    doc, seq, pred = qemu_trace()
    measured = [[d] for d in doc["measured_ns"]]
    v = judge(measured, pred, noise, doc["labels"], ops(seq))
    assert v.best == "call_srcu" and v.matches_well
    assert "call_srcu_expedited" not in v.ties and v.llr_to_runner_up is not None and v.llr_to_runner_up > TIE_LLR
    assert not all(vf.fits for vf in v.variants)
    expedited = next(vf for vf in v.variants if vf.variant == "call_srcu_expedited")
    assert not expedited.fits  # it predicts no stall where two were measured
    # The steps QEMU issues that the model carries at their measured cost count for nothing.
    assert all(seq.steps[i].op != "ioctl" for i in v.discriminating)
    text = _text(v, measured, pred)
    assert text.startswith("The host behaves like call_srcu") and "posterior" in text and "log-likelihood ratio" in text


def test_the_noise_fit_recovers_bias_and_scatter():
    rng = random.Random(8)
    truth = NoiseModel(StudentT(-0.2, 0.3, 3), StudentT(0.0, 0.1, 4), "truth")
    steps = []
    for _ in range(60):
        bias = t_draw(rng, truth.bias)
        steps.append([bias + t_draw(rng, truth.scatter) for _ in range(100)])
    m = fit(steps, "fitted")
    assert m.bias.location == pytest.approx(-0.2, abs=0.1) and m.bias.scale == pytest.approx(0.3, rel=0.3)
    assert m.scatter.location == 0 and m.scatter.scale == pytest.approx(0.1, rel=0.1) and 2 <= m.scatter.df <= 8
    with pytest.raises(ValueError):
        fit_t([0.1] * 3)
