"""What ``--extras`` writes beside a run's outputs, in a folder of its own (never the output folder, where
every file must be an output): per written case a PNG preview (:mod:`brasyn.inference.preview`) and, for a
case synthesised as the mean of several draws (``--draws``), ``<case>-<target>-std.nii.gz``: the per-voxel
standard deviation of the draws on the output's grid, header and intensity scale, zero outside the brain.
"""

from __future__ import annotations

import logging
from pathlib import Path

from brasyn.data.cases import Case
from brasyn.data.provenance import short_description
from brasyn.data.volumes import write_volume
from brasyn.inference.preview import preview_settings, previewer
from brasyn.inference.synthesize import Preview, Synthesizer, Synthetic

__all__ = ["SPREAD_SUFFIX", "extras_writer", "spread_path"]

log = logging.getLogger("brasyn")

SPREAD_SUFFIX = "-std.nii.gz"


def spread_path(folder: Path, case: Case) -> Path:
    """Where the uncertainty map of ``case`` goes: ``<case>-<target>-std.nii.gz`` in ``folder``."""
    assert case.target is not None
    return folder / f"{case.id}-{case.target.value}{SPREAD_SUFFIX}"


def extras_writer(folder: Path, synthesizer: Synthesizer) -> Preview:
    """The ``--extras`` hook of a run: the uncertainty map where there is one, then the preview."""
    draw_preview = previewer(folder, *preview_settings(synthesizer))

    def write(case: Case, synthetic: Synthetic) -> None:
        if synthetic.spread_on_grid is not None:
            path = spread_path(folder, case)
            record = {**synthetic.settings, "map": "std"}
            description = f"std of {record.get('draws')} draws; " + short_description(record)
            write_volume(synthetic.spread_on_grid, synthetic.record.reference, path, description, record)
            log.debug("%s: uncertainty map %s", case.id, path.name)
        draw_preview(case, synthetic)

    return write
