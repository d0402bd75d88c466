"""``python -m pccl_py.tools.diloco_train``: see :mod:`pccl_py.tools.diloco_train`."""

import sys

from .launcher import main

sys.exit(main())
