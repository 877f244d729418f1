"""The ground floor: errors and exit codes, logging, runtime and device choice, speed switches, files."""
