"""``python -m brasyn.evaluate``."""

from brasyn.commands.evaluate import main

raise SystemExit(main())
