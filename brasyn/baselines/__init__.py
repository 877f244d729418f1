"""``python -m brasyn.baselines`` (the command lives in :mod:`brasyn.commands.baselines`)."""
