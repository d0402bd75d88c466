#!/usr/bin/env python3
"""The flood scenario (tests/helpers/flood_scenario.py), for as long as asked, with its figures.

Why this file exists: tests/security/test_flood.py runs the scenario (tests/helpers/flood_scenario.py) for about 20 s
with firm bounds; this runs it for minutes and reports what the test only bounds: peak RSS (VmHWM) of
the master and every peer, the longest wait between two successful ops of any member, each newcomer's
join time, the evictions (there must be none) and what the flooders achieved. Example::

    python stress/pccl_flood.py --duration 300 --newcomers 3 --json flood.json

It uses the installed package (pip install .) and the test harness next to it; exit status 1 when an
honest peer was evicted or an op failed or was wrong.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "helpers"))
    from flood_scenario import main

    sys.exit(main())
