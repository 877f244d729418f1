"""``python -m brasyn.weights``."""

from brasyn.commands.weights import main

raise SystemExit(main())
