"""Files and names: the contrasts and their names, case discovery, ``--map``, flat folders, volumes in and
out, and the settings record each output carries."""
