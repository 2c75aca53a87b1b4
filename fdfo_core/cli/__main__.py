"""`python -m fdfo_core.cli ...` (what torchrun / accelerate launch run): the `fdfo` command."""

import sys

from .main import main

sys.exit(main())
