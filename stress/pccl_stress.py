#!/usr/bin/env python3
"""``pccl-stress`` from a checkout: seeded churn (spawn, SIGKILL, SIGSTOP, leave, master restart)
against self-verifying peers, with a pass/fail report.

Why this file exists: the tool lives in the package (``pccl_py.stress``, installed as the
``pccl-stress`` command) so that it works after ``pip install``; this wrapper runs it from a
checkout next to the other stress tools. Example, the one-hour run from the README::

    python stress/pccl_stress.py --duration 3600 --seed 1 --peers 6 --json stress-1h.json
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Prefer this checkout's package (its compiled core must be built, see README), so that the tool
    # matches the code next to it even when an older pccl_py is installed.
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
    if os.path.exists(os.path.join(checkout, "pccl_py", "stress.py")):
        sys.path.insert(0, checkout)
    from pccl_py.stress import main

    sys.exit(main())
