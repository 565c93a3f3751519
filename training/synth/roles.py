"""Which synthetic machine types may be looked at for what (issue 39, docs/corpus.md).

The protocol, so that a score on types nobody tuned for means what it says:

* TUNING_TYPES, the six types of machines.py: every method's settings are frozen on these
  (the standard corpus holds four of them).
* VALIDATION_TYPES: choices between frozen variants (branches, weights, the default) are
  made on these, and on label-free proxies computed from training clips.
* TEST_TYPES: only reported ("unseen types" in docs/results.md). No setting or choice is
  made or moved after looking at a number measured on them; a change made anyway is said
  so on the page.

Every registered machine type has exactly one role (tests/training/test_plant_machines.py).
"""

from __future__ import annotations

TUNING_TYPES: tuple[str, ...] = ("fan", "pump", "gearbox", "bearing", "slider", "valve")
VALIDATION_TYPES: tuple[str, ...] = ("blower", "gear_pump")
TEST_TYPES: tuple[str, ...] = ("vfd_motor", "chain_drive", "screw_feeder")


def role(machine: str) -> str:
    """'tuning', 'validation' or 'test' for a synthetic type; 'unknown' for any other (a real
    corpus's own types)."""
    for name, types in (("tuning", TUNING_TYPES), ("validation", VALIDATION_TYPES),
                        ("test", TEST_TYPES)):
        if machine in types:
            return name
    return "unknown"
