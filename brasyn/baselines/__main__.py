"""``python -m brasyn.baselines``."""

from brasyn.commands.baselines import main

raise SystemExit(main())
