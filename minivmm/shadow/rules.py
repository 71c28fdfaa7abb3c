"""The rules the shadow judges by, and how many findings of each it keeps in full.

Apart from :mod:`minivmm.shadow.summary` (the findings' and the summary's dataclasses), which the checker
needs only when it finds something or when the run is over: a boot imports that after its run.
"""

from __future__ import annotations

import enum

#: Findings of each kind a summary keeps in full (the counts are always complete).
FIRST_KEPT = 5


class Rule(str, enum.Enum):
    """The rules a finding can break: the kernel's (a violation, exit code 3) or the guest's (a guest
    error, exit code 5)."""

    #: The kernel's: an exit of an access some in-kernel device claims in every version of its window.
    EXIT_CLAIMED = "exit-of-a-claimed-access"
    #: The kernel's: an eventfd count no open registration accounts for.
    UNACCOUNTED_COMPLETION = "unaccounted-in-kernel-completion"
    #: The guest's: the writes a guest reported on a doorbell differ from what the kernel counted plus
    #: what exited. Only the guest's word says how many it wrote, so a guest can break this rule at
    #: will (``movl $0x03000005, 0xd0002000; hlt``: "I wrote 5 times"); it proves nothing about the
    #: kernel, whose completions the two rules above already check against the VMM's own knowledge.
    GUEST_REPORT_DOES_NOT_ADD_UP = "guest-report-does-not-add-up"

    @property
    def guest_error(self) -> bool:
        """Whether breaking this rule is the guest's fault (not the kernel's)."""
        return self is Rule.GUEST_REPORT_DOES_NOT_ADD_UP
