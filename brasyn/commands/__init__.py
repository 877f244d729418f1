"""Every command line: parsers, ``main`` functions, the flag kit and its converters, subcommands."""
