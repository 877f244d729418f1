"""Reading the YAML files a user hands brasyn (MLCube parameters, ``--config``, ``--map FILE``).

They hold a few plain values, so an alias (``*name``) is refused while the file is read: a few hundred
bytes of nested aliases expand to billions of values, which a check or a message would then walk or print
for minutes before running out of memory.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["AliasRefused", "load_plain_yaml"]


class AliasRefused(yaml.YAMLError):
    """The text uses an alias; the message says where."""


class _PlainLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops at the first alias instead of sharing the anchored value."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            where = f"line {event.start_mark.line + 1}" if event.start_mark is not None else "the file"
            raise AliasRefused(
                f"it uses the alias *{event.anchor} ({where}); brasyn reads plain values only: write each "
                "value out in full"
            )
        return super().compose_node(parent, index)


def load_plain_yaml(text: str) -> Any:
    """The value of one YAML document of plain values (as ``yaml.safe_load``); raises
    :class:`AliasRefused` (a ``yaml.YAMLError``) at the first alias."""
    return yaml.load(text, Loader=_PlainLoader)
