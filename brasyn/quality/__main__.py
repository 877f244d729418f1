"""``python -m brasyn.quality``."""

from brasyn.bench.quality import main

raise SystemExit(main())
