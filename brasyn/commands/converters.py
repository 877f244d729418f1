"""What a value given to brasyn may be: one converter per kind of value, shared by the command-line
flags and the MLCube parameters file.

Each converter serves as argparse ``type=`` (it receives the string typed on the command line) and on
values from a YAML parameters file (which arrive as str, int, float, bool or None). A bad value raises
:class:`argparse.ArgumentTypeError` with one sentence naming the allowed values: argparse prints it as it
is (``argument --steps: expected a whole number from 1 to 1000, got '2.7'``) and
:func:`brasyn.commands.options.read_parameters` puts the file and key in front of it. So ``--steps 2.7`` and
``steps: 2.7`` are refused alike, instead of one of them silently running 2 steps.
"""

from __future__ import annotations

import argparse
import math
import re
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brasyn.common.files import write_problem
from brasyn.data.contrast_map import ContrastMap, MapError, parse_map
from brasyn.data.modalities import modality_from_alias
from brasyn.inference.sharding import Shard, parse_shard

__all__ = [
    "Converter",
    "shown_value",
    "contrast",
    "device_spec",
    "map_spec",
    "one_of",
    "output_file",
    "real_number",
    "shard_spec",
    "whole_number",
]

Converter = Callable[[Any], Any]

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_WHOLE = re.compile(r"[+-]?\d+")


_SHOWN = reprlib.Repr()
# a message names a value, it does not reproduce it: a long list or text is cut, never walked in full
_SHOWN.maxstring = _SHOWN.maxother = 120
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 8
_SHOWN.maxlevel = 3


def shown_value(value: Any) -> str:
    """A value as the user wrote it, quoted when it is text (so ``'2.7'`` and ``2.7`` can be told apart),
    at most a line long."""
    return _SHOWN.repr(value)


def _refuse(expected: str, value: Any) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"expected {expected}, got {shown_value(value)}")


def _named(function: Converter, name: str) -> Converter:
    # argparse names a converter in some messages and help output; keep that readable
    function.__name__ = function.__qualname__ = name
    return function


def contrast(value: Any) -> str:
    """A contrast by any of its names (``flair`` -> ``t2f``, ``t1ce`` -> ``t1c``, ``T2`` -> ``t2w``):
    datasets name them differently and a user should not have to translate. Returns the canonical name."""
    if not isinstance(value, str):
        raise _refuse("a contrast: t1n, t1c, t2w or t2f (or an alias such as t1, t1ce, t2, flair)", value)
    try:
        return modality_from_alias(value).value
    except ValueError:
        raise _refuse(
            "a contrast: t1n, t1c, t2w or t2f (or an alias such as t1, t1ce, t2, flair)", value
        ) from None


def map_spec(value: Any) -> ContrastMap:
    """``--map`` and the ``map`` parameter: ``CONTRAST=PATTERN`` (``t1c=*MPRAGE_post*``), a YAML file of
    ``contrast: pattern`` lines, or (from a parameters file) such a mapping itself."""
    try:
        return parse_map(value)
    except MapError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def one_of(*choices: str) -> Converter:
    """A converter that takes exactly one of ``choices`` (case and spelling as given)."""
    if not choices:
        raise ValueError("one_of needs at least one choice")
    allowed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]

    def convert(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise _refuse(f"one of {allowed}", value)

    convert.choices = tuple(choices)  # type: ignore[attr-defined]
    return _named(convert, "one of " + "|".join(choices))


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of {low} or more"
    if high is not None:
        return f" of {high} or less"
    return ""


def whole_number(low: int | None = None, high: int | None = None) -> Converter:
    """A converter to an int within ``[low, high]`` (either bound may be None).

    It takes an int or the text of one; it refuses True/False and every float, 2.0 included, because a
    step count or seed written as 2.7 is a mistake to point out, not a number to round."""
    expected = "a whole number" + _range(low, high)

    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise _refuse(expected, value)
        if isinstance(value, int):
            number = value
        elif isinstance(value, str) and _WHOLE.fullmatch(value.strip()):
            number = int(value.strip())
        else:
            raise _refuse(expected, value)
        if (low is not None and number < low) or (high is not None and number > high):
            raise _refuse(expected, value)
        return number

    return _named(convert, "whole number")


def real_number(low: float | None = None, high: float | None = None) -> Converter:
    """A converter to a finite float within ``[low, high]``; takes an int, a float or the text of one,
    refuses True/False, NaN and infinities."""
    expected = "a number" + _range(low, high)

    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _refuse(expected, value)
        try:
            number = float(value)
        except ValueError:
            raise _refuse(expected, value) from None
        if not math.isfinite(number):
            raise _refuse(expected, value)
        if (low is not None and number < low) or (high is not None and number > high):
            raise _refuse(expected, value)
        return number

    return _named(convert, "number")


def device_spec(value: Any) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, lower-cased. Syntax only: whether that GPU exists is
    :func:`brasyn.common.runtime.select_device`'s question, asked once the run starts."""
    if isinstance(value, str):
        spec = value.strip().lower()
        if _DEVICE.fullmatch(spec):
            return spec
    raise _refuse("auto, cpu, cuda or cuda:N (N a GPU index)", value)


def shard_spec(value: Any) -> Shard:
    """``i/n``: share i of n of the cases."""
    try:
        return parse_shard(str(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def output_file(value: Any) -> Path:
    """A file a command writes after its work (``--json``, ``--csv``): checked now, so that a path that
    cannot be written stops the command before the work rather than with a traceback after it."""
    path = Path(str(value))
    problem = write_problem(path)
    if problem is not None:
        raise argparse.ArgumentTypeError(
            f"cannot write {path}: {problem}; name a file in a folder this user may write"
        )
    return path
