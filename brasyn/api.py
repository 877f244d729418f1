"""brasyn from Python: one case from files to a file, and a checkpoint from a weights folder.

:func:`infer_single` is the single-case form of the command line (``python -m brasyn --t1n FILE --t1c FILE
--t2w FILE --out FILE``) as a function, with the keywords of the BraTS orchestrator's ``infer_single``. It
runs the case through the same :class:`~brasyn.inference.synthesize.Synthesizer` as every batch (load, model
space, predict, back, atomic write), so its output is byte for byte what the command writes with the same
settings. :func:`load_denoiser` gives the network of one target contrast, for work outside the pipeline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from brasyn.common.acceleration import SpeedSettings
from brasyn.common.errors import BrasynError, CaseError, UsageError
from brasyn.data.cases import single_case
from brasyn.data.modalities import Modality, modality_from_alias
from brasyn.inference.predictors import make_predictor
from brasyn.inference.synthesize import Synthesizer
from brasyn.model.diffusion import Sampling
from brasyn.model.unet import Denoiser
from brasyn.weights.bundled import BUNDLED_WEIGHTS
from brasyn.weights.store import WeightStore

__all__ = ["infer_single", "load_denoiser"]

log = logging.getLogger("brasyn")

"""The demo weights shipped beside the package (see ``weights/README.md``)."""


def infer_single(
    *,
    t1n: Path | str | None = None,
    t1c: Path | str | None = None,
    t2w: Path | str | None = None,
    t2f: Path | str | None = None,
    output_file: Path | str,
    weights: Path | str | None = None,
    method: str = "diffusion",
    sampler: str = "ddpm",
    steps: int = 1000,
    eta: float = 0.0,
    device: str = "auto",
    seed: int = 42,
    precision: str = "fp32",
    draws: int = 1,
    overwrite: bool = True,
    progress: bool = False,
) -> Path:
    """Synthesise the missing one of the four contrasts from the three files given and write it to
    ``output_file``; returns its path.

    Exactly three of ``t1n``, ``t1c``, ``t2w``, ``t2f`` are given (image files: NIfTI, MetaImage, NRRD);
    ``output_file`` ends in ``.nii.gz`` (or the inputs' format). ``weights`` is a weights folder with
    ``manifest.json`` (default: the bundled demo weights); ``method``, ``sampler``, ``steps``, ``eta``,
    ``device``, ``seed``, ``precision`` and ``draws`` mean what the flags of the same name mean (the
    defaults are the command's: the official 1000-step sampler; ``sampler="dpm++2m", steps=10`` is
    quick). With ``overwrite=False`` an existing output is kept and :class:`FileExistsError` raised.

    Raises :class:`~brasyn.common.errors.UsageError` when the call cannot start (not three inputs, a missing
    file, a bad setting or weights folder) and :class:`~brasyn.common.errors.CaseError` when the case fails
    (an unreadable or broken image, contrasts not co-registered, a write that failed), each with a message
    that says what to do. Nothing partial is ever left at ``output_file``; the inputs are only read.
    """
    case = single_case({"t1n": t1n, "t1c": t1c, "t2w": t2w, "t2f": t2f}, output_file)
    output = Path(output_file)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        sampling = Sampling(sampler=sampler, steps=steps, eta=eta, draws=draws)
        speed = SpeedSettings(precision=precision)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    folder = Path(weights) if weights is not None else BUNDLED_WEIGHTS
    if folder.is_file() and folder.name == "manifest.json":
        folder = folder.parent
    predictor = make_predictor(method, folder, device, sampling, speed)
    speed.configure_backends(predictor.device)  # as the command does, so that the bytes are the same
    synthesizer = Synthesizer(predictor, seed=seed, progress=progress)
    result = synthesizer.process(case, output.parent, overwrite=True)
    if result.status != "written":
        raise CaseError(case.id, result.message, result.files)
    log.info("%s: %s", case.id, result.message)
    return output


def load_denoiser(
    weights: Path | str, target: Modality | str, device: torch.device | str = "cpu"
) -> Denoiser:
    """The denoiser that synthesises ``target`` (``t2f``, or an alias such as ``flair``), from the weights
    folder ``weights`` (or its ``manifest.json``), in eval mode on ``device``; its file's sha256 is checked
    first. Raises :class:`~brasyn.common.errors.WeightsError` saying what is missing or wrong."""
    folder = Path(weights)
    if folder.is_file() and folder.name == "manifest.json":
        folder = folder.parent
    try:
        modality = modality_from_alias(target)
    except ValueError as exc:
        raise BrasynError(str(exc)) from None
    return WeightStore(folder).load(modality, device)
