"""``python -m brasyn.quality`` (the command lives in :mod:`brasyn.commands.quality`)."""
