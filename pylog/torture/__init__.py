"""Crash and fault torture for pylog, with a Jepsen-style history checker.

    python -m pylog.torture SCENARIO --trials N --seed S     (SCENARIO: 1-6, a name, or all)
    python -m pylog.torture all --quick                      (the CI-sized run)

Scenarios (scenarios.py): 1 kill -9 during transactions with readers running,
2 every failpoint crossed with its first hits, 3 simulated power loss,
4 I/O errors, 5 kill -9 during recovery, 6 a soak with a transactional
copier.  checker.py judges producers' and consumers' logs; powerloss.py
models what a power loss leaves on disk; workload.py is what the children
run.  Each scenario prints one scoreboard row.
"""
from .checker import KINDS, History, Report, check  # noqa: F401
