"""``python -m brasyn``: the same command line as ``entrypoint.py``."""

from brasyn.cli import main

raise SystemExit(main())
