"""brasyn: synthesis of a missing brain MRI contrast with a conditional 3-D wavelet diffusion model.

From Python: ``brasyn.infer_single(t1n=..., t1c=..., t2w=..., output_file=...)`` synthesises one case from
files to a file; ``brasyn.load_denoiser(weights_dir, target)`` loads one checkpoint (see :mod:`brasyn.api`).
"""

from typing import Any

from brasyn.common.version import __version__

__all__ = ["__version__", "infer_single", "load_denoiser"]


def __getattr__(name: str) -> Any:
    # imported on first use: ``import brasyn`` (every command, options' version) must not pull in torch
    if name in ("infer_single", "load_denoiser"):
        from brasyn import api

        return getattr(api, name)
    raise AttributeError(f"module 'brasyn' has no attribute {name!r}")
