"""``python -m brasyn.bench``."""

from brasyn.commands.bench import main

raise SystemExit(main())
