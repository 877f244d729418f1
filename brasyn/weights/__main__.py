"""``python -m brasyn.weights``."""

from brasyn.weights.store import main

raise SystemExit(main())
