"""Sagaloop's own chaos suite, on real SQLite files.

The checkout saga of `checkout.py` runs against deterministic fake services
that write a side-effect ledger; faults are real (SIGKILL, abandoned
runtimes, a second connection holding the write lock, a database that
cannot grow, corrupt rows) or injected at the store boundary (failed
writes, lost acknowledgements). `invariants.py` checks every saga against
its history, its ledger records and a reference model of its plan.

The default run is short; SAGALOOP_SOAK=1 enables the long soaks.
"""
