"""``python -m qdmed``."""

import sys

from qdmed.cli import main

sys.exit(main())
