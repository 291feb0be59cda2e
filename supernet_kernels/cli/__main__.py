"""``python -m supernet_kernels.cli``."""

import sys

from . import main

sys.exit(main())
