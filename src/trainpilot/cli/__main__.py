"""`python -m trainpilot.cli` (torchrun launches the trainer this way)."""

import sys

from trainpilot.cli.main import main

sys.exit(main())
