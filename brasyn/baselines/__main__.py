"""``python -m brasyn.baselines``."""

from brasyn.inference.baselines import main

raise SystemExit(main())
