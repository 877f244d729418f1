"""Where the main job's settings come from besides its flags: a config file and a few environment variables.

The no-argument form (``docker run ... IMAGE``) has no command line to choose a sampler on, so a run can
also be set up by

* a config file, ``--config FILE`` or ``$BRASYN_CONFIG``: the MLCube parameters file itself (the same keys,
  :data:`brasyn.commands.options.MLCUBE_PARAMETERS`, the same checks, ``hotfix:`` accepted and ignored);
* the variables of :data:`SETTING_VARIABLES` (``BRASYN_SAMPLER``, ``BRASYN_STEPS``, ``BRASYN_PRECISION``,
  ``BRASYN_DEVICE``): what a ``docker run -e`` user needs, checked by the converters of the flags.

A setting is taken from the first of: its flag, its variable, the config file, the flag's default. A flag
typed on the command line always wins, even when it repeats the default (``--steps 1000`` with
``BRASYN_STEPS=10`` runs 1000 steps). An empty variable counts as unset (``-e BRASYN_STEPS=`` in a
compose file is no setting). A run that uses none of this parses exactly as before.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brasyn.commands.converters import shown_value
from brasyn.commands.options import MLCUBE_IGNORED, MLCUBE_PARAMETERS, read_parameters
from brasyn.common.errors import UsageError

__all__ = ["CONFIG_VARIABLE", "SETTING_VARIABLES", "add_config_option", "apply_sources", "variable_settings"]

log = logging.getLogger("brasyn")

CONFIG_VARIABLE = "BRASYN_CONFIG"
"""The config file of a run that names none with ``--config`` (``-e BRASYN_CONFIG=/config/brasyn.yaml``)."""

SETTING_VARIABLES: dict[str, str] = {
    "BRASYN_SAMPLER": "sampler",
    "BRASYN_STEPS": "steps",
    "BRASYN_PRECISION": "precision",
    "BRASYN_BACKEND": "backend",
    "BRASYN_DEVICE": "device",
}
"""Environment variable -> the setting (a key of the parameters file, the dest of its flag) it gives."""

_UNSET = object()
"""Put in place of a setting before the second parse: still there afterwards means no flag gave it."""


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``: settings from a YAML file with the MLCube parameters file's keys."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML file of settings with the keys of the MLCube parameters file "
        f"({', '.join(MLCUBE_PARAMETERS)}), checked like their flags; default ${CONFIG_VARIABLE}. "
        "A flag beats a BRASYN_* variable, which beats the file",
    )


def variable_settings(environ: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """The settings given by :data:`SETTING_VARIABLES` in ``environ``: ``{setting: (variable, value)}``,
    each value checked by its flag's converter; a bad one is a :class:`UsageError` naming the variable, the
    value and what is allowed (the run must not start on a typo in a ``docker run -e``)."""
    found: dict[str, tuple[str, Any]] = {}
    for variable, key in SETTING_VARIABLES.items():
        text = environ.get(variable, "")
        if not text.strip():
            continue
        try:
            found[key] = (variable, MLCUBE_PARAMETERS[key](text))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise UsageError(
                f"the environment variable {variable}={shown_value(text)} is not valid: {exc}; set it to an "
                "allowed value or unset it"
            ) from None
    return found


def _config_file(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Path, str] | None:
    """The config file to read and how it was named (for the messages), or None."""
    if getattr(args, "config", None) is not None:
        return Path(args.config), "--config"
    named = environ.get(CONFIG_VARIABLE, "").strip()
    return (Path(named), f"${CONFIG_VARIABLE}") if named else None


def _given_on_the_command_line(
    parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace, keys: list[str]
) -> set[str]:
    """Which of ``keys`` a flag in ``argv`` set, even to its default value: argv is parsed again with a
    marker in place of each key whose default is not None (argparse keeps a value already in the
    namespace unless a flag replaces it); a key whose default is None (``--map``, ``--target``) was given
    when it is not None."""
    marked = {key: _UNSET for key in keys if parser.get_default(key) is not None}
    again = parser.parse_args(argv, namespace=argparse.Namespace(**marked))
    return {
        key
        for key in keys
        if (getattr(again, key) is not _UNSET if key in marked else getattr(args, key, None) is not None)
    }


def apply_sources(
    parser: argparse.ArgumentParser,
    argv: list[str],
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """``args`` (``argv`` parsed by the main command's ``parser``) with every setting no flag gave taken
    from the ``BRASYN_*`` variables of ``environ`` (default ``os.environ``), else the config file
    (``--config`` or ``$BRASYN_CONFIG``), else left at the flag's default. Bad variables and config files
    are a :class:`UsageError` naming the variable, or the file and the key."""
    environ = os.environ if environ is None else environ
    named = _config_file(args, environ)
    from_file: dict[str, Any] = {}
    if named is not None:
        path, how = named
        from_file = read_parameters(path, MLCUBE_PARAMETERS, MLCUBE_IGNORED, what=f"config file ({how})")
    from_variables = variable_settings(environ)
    keys = sorted(set(from_file) | set(from_variables))
    if not keys:
        return args
    given = _given_on_the_command_line(parser, argv, args, keys)
    origins = []
    for key in [k for k in keys if k not in given]:
        if key in from_variables:
            variable, value = from_variables[key]
            origins.append(f"{key} from {variable}")
        else:
            value = from_file[key]
            origins.append(f"{key} from {named[0] if named else 'the config file'}")
        setattr(args, key, value)
    if origins:
        log.info("settings not given as flags: %s", "; ".join(origins))
    return args
