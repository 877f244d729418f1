"""``python -m brasyn.evaluate``."""

from brasyn.evaluate.score import main

raise SystemExit(main())
