#!/usr/bin/env python3
"""``pccl-stress`` from a checkout: seeded churn (spawn, SIGKILL, SIGSTOP, leave, master restart)
against self-verifying peers, with a pass/fail report.

Why this file exists: the tool lives in the package (``pccl_py.tools.stress``, installed as the
``pccl-stress`` command) so that it works after ``pip install``; this wrapper runs it from a
checkout next to the other stress tools. Example, the one-hour run from the README::

    python stress/pccl_stress.py --duration 3600 --seed 1 --peers 6 --json stress-1h.json
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES

if __name__ == "__main__":
    # Prefer this checkout's package when its compiled core is built in place, so that the tool
    # matches the code next to it; otherwise use the installed package (`pip install .`).
    # (Only a compiled module counts: the type stub _core.pyi is always there.)
    package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "pccl_py")
    if any(name.startswith("_core") and name.endswith(tuple(EXTENSION_SUFFIXES)) for name in os.listdir(package)):
        sys.path.insert(0, os.path.dirname(package))
    from pccl_py.tools.stress.cli import main

    sys.exit(main())
