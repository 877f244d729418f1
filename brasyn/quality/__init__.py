"""``python -m brasyn.quality`` (the command lives in :mod:`brasyn.bench.quality`)."""
