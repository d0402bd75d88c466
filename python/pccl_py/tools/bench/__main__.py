"""``python -m pccl_py.tools.bench``: the same program as ``pccl-bench``."""

import sys

from .cli import main

sys.exit(main())
