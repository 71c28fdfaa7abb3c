"""What the kernel model predicts for a reproducer's sequence: per step and variant, min/p10/p50/p90/max,
and which steps stall under which variant (the reproducer's header states them, its --json carries them).
"""

from __future__ import annotations

from kernel_model.predict import phase_deterministic, predict
from kernel_model.sequences import Sequence
from kernel_model.stats import is_stall, longest_stall
from kernel_model.variants import MAIN_VARIANTS

#: Monte Carlo samples where vCPUs run before the last step (~10 ms each), as ``minivmm timing`` caps them.
MONTE_CARLO_SAMPLES = 200


class ModelSummary:
    """The main variants' predictions for ``seq`` at ``hz`` on ``platform``, with the sequence's own gaps."""

    def __init__(self, seq: Sequence, hz: int, platform: str, samples: int, seed: int = 0) -> None:
        if not phase_deterministic(seq):
            samples = min(samples, MONTE_CARLO_SAMPLES)
        self.hz, self.platform, self.samples = hz, platform, samples
        self.variants: tuple[str, ...] = MAIN_VARIANTS
        #: quantiles[step][variant]: min, p10, p50, p90, max in microseconds.
        preds = {v: predict(seq, v, hz, platform, samples=samples, seed=seed) for v in self.variants}
        self.quantiles: list[dict[str, dict[str, float]]] = [
            {v: preds[v].steps[i].stats() for v in self.variants} for i in range(len(seq.steps))]
        #: The steps before the teardown: the stalled one is among them, as in ``minivmm timing``.
        self.setup_steps = len(seq.setup_steps())

    def stalls(self, step: int) -> dict[str, bool]:
        """Per variant, whether its predicted median of ``step`` is a stall."""
        return {v: is_stall(q["p50"] * 1000) for v, q in self.quantiles[step].items()}

    def stalled_steps(self) -> list[int]:
        """The steps some variant predicts a stall for: those the header reports."""
        return [i for i in range(len(self.quantiles)) if any(self.stalls(i).values())]

    def variant_stall(self, step: int) -> bool:
        """Whether the variants disagree on ``step``: it stalls under some and not under others, so a
        stall there says which kernel the host runs (what ``--kselftest`` checks)."""
        return len(set(self.stalls(step).values())) == 2

    def call_srcu_stall(self) -> int | None:
        """The step ``minivmm timing`` marks as the stalled one (the longest call_srcu median, if a stall)."""
        if "call_srcu" not in self.variants:
            return None
        return longest_stall([q["call_srcu"]["p50"] * 1000 for q in self.quantiles[:self.setup_steps]])
