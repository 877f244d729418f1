"""``python -m brasyn.train``."""

from brasyn.commands.train import main

raise SystemExit(main())
