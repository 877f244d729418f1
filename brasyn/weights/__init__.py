"""Weights folders: the store (loading, saving, random weights), the manifest, the released files."""
