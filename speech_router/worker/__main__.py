"""``python -m speech_router.worker ENGINE ...``: see ``speech_router.worker.cli``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
