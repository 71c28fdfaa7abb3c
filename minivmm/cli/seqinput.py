"""The sequence a user names (``--sequence NAME|FILE``), for ``model`` and ``timing`` alike: loaded, and
refused as one line before any work when the modelled kernel would refuse one of its steps.

The kernel model answers an ioctl it must refuse the way the kernel does (``KvmIoctlError`` with the
kernel's errno: an irqchip after vCPUs, an ioeventfd of length 3, a duplicate ioeventfd, a deassign of
nothing). Both commands run the steps through the model once up front, so such a sequence is bad
input (exit 2) named by its step, never a traceback half-way through a measurement.
"""

from __future__ import annotations

from minivmm.cli.errors import CliError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); mypy knows the name

if TYPE_CHECKING:
    from kernel_model.costs import Costs
    from kernel_model.profile import HostProfile
    from kernel_model.sequences import Sequence


def load(name_or_path: str) -> Sequence:
    """The named sequence or sequence file; ``CliError`` (exit 2) with the loader's one-line reason."""
    from kernel_model.sequences import load_sequence

    try:
        return load_sequence(name_or_path)
    except ValueError as e:  # SequenceError: the message names the file and line
        raise CliError(str(e)) from None


def refuse_what_the_kernel_refuses(seq: Sequence, platform: str = "vmx") -> None:
    """The one validation of a sequence (``kernel_model.sequences.validate``: its steps run once through
    the kernel model); a step the modelled kernel refuses, or one that cannot be issued as written, is
    a ``CliError`` naming the step (1-based, as a sequence file counts its steps), the ioctl and the
    errno."""
    from kernel_model.sequences import SequenceError, validate

    try:
        validate(seq, platform)
    except SequenceError as e:
        raise CliError(str(e)) from None


def to_file_text(seq: Sequence) -> str:
    """``seq`` in the sequence file format, so that loading the text gives the same steps back
    (``minivmm model --show-sequence NAME > mine.seq`` is a starting point for a sequence of one's own):
    ``kernel_model.sequences.format_sequence``, which every op's spec drives."""
    from kernel_model.sequences import format_sequence

    return format_sequence(seq)


def profile_costs(path: str | None, hz: int, platform: str | None = None) -> Costs | None:
    """The model's Costs from ``--profile FILE`` at ``hz`` (None without one), for ``model`` and
    ``timing`` alike; a file that is not a usable host profile is a ``CliError`` (one line, exit 2).
    A profile calibrated at another HZ or on another platform than the one modelled is used (that is
    how a host's latencies are tried against a kernel it does not run), with one line on stderr
    saying so: its whole jiffies are rescaled to ``hz``, an assumption."""
    profile = load_profile(path)
    if profile is None:
        return None
    warning = profile_mismatch(profile, path or "", hz, platform)
    if warning:
        import sys
        try:
            sys.stderr.write(f"minivmm: warning: {warning}\n")
        except OSError:
            pass
    return profile.costs(hz=hz)


def load_profile(path: str | None) -> HostProfile | None:
    """The host profile at ``path`` (None without one); ``CliError`` (one line, exit 2) if unusable."""
    if path is None:
        return None
    from kernel_model.profile import ProfileError
    from kernel_model.profile import load_profile as load
    try:
        return load(path)
    except ProfileError as e:
        raise CliError(str(e)) from None


def profile_mismatch(profile: HostProfile, path: str, hz: int, platform: str | None) -> str | None:
    """One line when ``profile`` was calibrated at another HZ or platform than the run models."""
    from minivmm.safetext import safe
    other_hz = profile.hz != hz
    other_platform = bool(platform and profile.platform and profile.platform != platform)
    if not (other_hz or other_platform):
        return None
    modelled = f"HZ={hz}" + (f" on {platform}" if platform else "")
    return (f"the host profile {safe(path)} was calibrated at HZ={profile.hz} on {safe(profile.platform)}, this run "
            f"models {modelled}: its latencies are used as measured" + (
                f", whole jiffies rescaled to HZ={hz} (an assumption)" if other_hz else "")
            + (", on a platform whose KVM backend it did not measure" if other_platform else ""))
