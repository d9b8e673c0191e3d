"""`python -m trainpilot.cli` (torchrun launches the trainer this way)."""

import sys

from trainpilot.cli.commands import main

sys.exit(main())
