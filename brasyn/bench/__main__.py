"""``python -m brasyn.bench``."""

from brasyn.bench.speed import main

raise SystemExit(main())
