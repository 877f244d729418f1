"""Measurement: speed, the GPU check, the loader and quantisation checks, quality comparisons."""
