"""`python -m musetok.cli ...` (and `torchrun ... -m musetok.cli ...`)."""

import sys

from musetok.cli.app import main

sys.exit(main())
