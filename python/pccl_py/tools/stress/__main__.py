"""``python -m pccl_py.tools.stress``: the same program as ``pccl-stress``."""

import sys

from .cli import main

sys.exit(main())
