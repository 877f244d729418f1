"""``python -m brasyn.example``."""

from brasyn.commands.example import main

raise SystemExit(main())
