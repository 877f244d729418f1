#!/usr/bin/env python3
"""Container entry point.

    entrypoint.py                                   /input -> /output (Docker, no arguments)
    entrypoint.py --input DIR --output DIR [...]    workstation or cluster
    entrypoint.py infer --data_path=DIR --output_path=DIR [--weights=PATH] [--parameters_file=FILE]   MLCube

``entrypoint.py --help`` lists every option.
"""

import sys
from pathlib import Path

# run from a checkout or the image without installing the package
sys.path.insert(0, str(Path(__file__).resolve().parent))

from brasyn.commands.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
