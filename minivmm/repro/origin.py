"""What a reproducer says it reproduces: its sequence's source and the host it was generated on."""

from __future__ import annotations

from typing import NamedTuple

from kernel_model.sequences import SEQUENCES, Sequence, parse_sequence, read_sequence_file


class Origin(NamedTuple):
    """Where a reproducer comes from: what its sequence is, and the host it was generated on."""

    #: What the sequence is, in lines: a named sequence's description, a file's own header comment.
    source: tuple[str, ...]
    #: The command that generated it (the options that change what it writes).
    command: str
    kernel: str
    machine: str
    hz: int
    hz_source: str
    platform: str
    platform_source: str
    minivmm_version: str


def load_with_source(name_or_path: str) -> tuple[Sequence, tuple[str, ...]]:
    """A named sequence or a sequence file (read once, with the one bounded reader), and the lines that
    say what it is: a named sequence's description; a file's name, its opening comment (``minivmm trace
    --save-sequence`` writes the traced command line there) and the host it says it was recorded on.
    SequenceError as ``load_sequence``."""
    if name_or_path in SEQUENCES:
        seq = SEQUENCES[name_or_path]
        return seq, (f"The named sequence {seq.name!r} of minivmm: {seq.description}",)
    text = read_sequence_file(name_or_path)
    seq = parse_sequence(text, name_or_path)
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line[1:].strip())
    recorded = ([f"(recorded on a host at HZ={seq.hz}, KVM platform {seq.platform})"]
                if seq.hz is not None and seq.platform is not None else [])
    return seq, (f"The sequence file {name_or_path!r}" + (":" if comment or recorded else "."), *comment,
                 *recorded)
