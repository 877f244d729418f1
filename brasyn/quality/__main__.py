"""``python -m brasyn.quality``."""

from brasyn.commands.quality import main

raise SystemExit(main())
