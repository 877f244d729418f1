"""``python -m brasyn``: the same command line as ``entrypoint.py``."""

from brasyn.commands.cli import main

raise SystemExit(main())
