"""CPU time of the processes a benchmark starts, to tell the engine's part of a speedup from
the host's. On a shared 2-core host the same work costs more CPU time when two processes run
at once (0.9x to 1.3x the serial cost over our ``make perf`` runs), which moves a wall-clock
speedup by as much. What the engine controls is how busy it keeps the cores: the speedup had
both sides' work cost the same CPU time. The jobs benchmark (minutes a side, one round)
asserts that, with a bound on the CPU ratio (twice the CPU time would be work done twice), and
records the wall-clock speedup beside them; the PostgreSQL one, short enough to repeat, pairs
rounds instead and records the CPU seconds.
"""
from __future__ import annotations

import resource


def children_cpu_seconds() -> float:
    """User + system time of this process's finished (waited-for) children."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime

