"""The package version, recorded in every output and report."""

__version__ = "0.1.0"
