"""``python -m qdmed``."""

from qdmed.cli import exit_with, main

exit_with(main())
