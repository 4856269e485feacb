# -*- test-case-name: tests.test_admission -*-
"""
Admission control: which new connection may take a slot, decided before the greeting.

L{netguard.admission.policy} holds the settings value (L{AdmissionPolicy}) and its vocabulary
(reasons, offence kinds); L{netguard.admission.state} the L{Admission} tables that apply it,
with L{netguard.admission.eviction} (the per-connection L{Slot} and the eviction ranking) and
L{netguard.admission.probation} (the probation pool).
The rules, pools, penalties and bounds: C{docs/operating.md} section 8.
"""

from netguard.admission.eviction import Slot
from netguard.admission.policy import (
    DENIED,
    EVICTED,
    GLOBAL_CAP,
    LANE_CAP,
    LANE_CAP_USER,
    NOT_ALLOWED,
    OFFENCE_KINDS,
    OVERLOAD_LAG,
    OVERLOAD_LOAD,
    OVERLOAD_MEMORY,
    PENALISED,
    PER_SOURCE_CAP,
    PRESSURE_REASONS,
    RANDOM_EARLY_DROP,
    RATE,
    REASONS,
    RELAY_CAP,
    UNAUTH_CAP,
    UNIX_SOURCE,
    UNKNOWN_SOURCE,
    AdmissionPolicy,
    Refusal,
    allowed_values,
)
from netguard.admission.state import Admission, TimeSource
from netguard.clocks import Scheduler

__all__ = [
    "DENIED",
    "EVICTED",
    "GLOBAL_CAP",
    "LANE_CAP",
    "LANE_CAP_USER",
    "NOT_ALLOWED",
    "OFFENCE_KINDS",
    "OVERLOAD_LAG",
    "OVERLOAD_LOAD",
    "OVERLOAD_MEMORY",
    "PENALISED",
    "PER_SOURCE_CAP",
    "PRESSURE_REASONS",
    "RANDOM_EARLY_DROP",
    "RATE",
    "REASONS",
    "RELAY_CAP",
    "UNAUTH_CAP",
    "UNIX_SOURCE",
    "UNKNOWN_SOURCE",
    "Admission",
    "AdmissionPolicy",
    "Refusal",
    "Scheduler",
    "Slot",
    "TimeSource",
    "allowed_values",
]
