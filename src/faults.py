"""Deterministic fault injection: end the process at a named point, for the resume tests.

With CIR_FAULT="<point>[@<iteration>]:<count>" set, the first call `fault_point(point,
n, iteration)` with n >= count (and the same iteration, when one is named) ends the
process at once with `os._exit(FAULT_EXIT_STATUS)`, like a kill: no clean-up, no
finally blocks. The points:

- "mining": after n training queries were walked for negatives;
- "training": after the Trainer finished saving checkpoint-n (a callback);
- "evaluation": after the split was encoded (n is the iteration);
- "augmentation": after n pairs were generated and flushed to the partial file.

With several processes, CIR_FAULT_RANK=<r> limits the fault to that rank. A test sets the
variables for a child process, so the kill lands exactly where it means however loaded
the machine is.
"""

from __future__ import annotations

import os
import re
import sys

FAULT_ENV = "CIR_FAULT"
FAULT_RANK_ENV = "CIR_FAULT_RANK"
FAULT_EXIT_STATUS = 86
_SPEC = re.compile(r"(?P<point>[a-z_]+)(?:@(?P<iteration>\d+))?:(?P<count>\d+)")


def fault_point(point: str, count: int, iteration: int | None = None) -> None:
    """End the process here if CIR_FAULT names this point and `count` has reached its count."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected <point>[@<iteration>]:<count>")
    if match["point"] != point or count < int(match["count"]):
        return
    if match["iteration"] is not None and iteration != int(match["iteration"]):
        return
    only_rank = os.environ.get(FAULT_RANK_ENV)
    if only_rank is not None and os.environ.get("RANK", "0") != only_rank:
        return
    sys.stderr.write(f"fault injected: {spec} (at {point} {count}, iteration {iteration})\n")
    sys.stderr.flush()
    os._exit(FAULT_EXIT_STATUS)
