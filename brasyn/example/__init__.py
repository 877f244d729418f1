"""``python -m brasyn.example`` (the command lives in :mod:`brasyn.commands.example`)."""
