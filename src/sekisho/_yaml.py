"""YAML as sekisho reads its configuration, policies and policy tests: safe, and strict about
repeated keys.

PyYAML keeps the last of two equal keys in a mapping without a word, so a tenant written twice
(the second time with only a few settings) silently loses its policy: the gateway would then
serve that tenant with no rules at all. Here a repeated key is an error naming both lines. Keys
a merge (``<<: *defaults``) brings in may still be overridden: that is what merges are for.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import IO, Any

import yaml
from yaml.constructor import ConstructorError

_MERGE = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # PyYAML refuses it below, with its own message
            if key in seen:
                raise ConstructorError(
                    f"in the mapping that starts on line {node.start_mark.line + 1}",
                    node.start_mark,
                    f"duplicate key {key!r} (first on line {seen[key] + 1}): YAML would keep "
                    "only the last one and silently drop the first",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


# Values a document may hold once its aliases are expanded. A configuration holds a few
# thousand; nine nested aliases of nine (a "billion laughs") hold 387 million, which every
# later step (${VAR} expansion, validation) would walk one by one.
MAX_VALUES = 200_000


def load(stream: str | bytes | IO[str] | IO[bytes]) -> Any:
    """``yaml.safe_load``, refusing repeated keys and aliases that expand past MAX_VALUES."""
    data = yaml.load(stream, Loader=StrictLoader)
    _refuse_alias_bombs(data)
    return data


def _refuse_alias_bombs(data: Any) -> None:
    """Count the values of ``data`` as if its aliases were copies, stopping at the bound (so
    this costs at most MAX_VALUES steps, and ends on an alias that contains itself)."""
    count = 0
    stack = [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConstructorError(
                None,
                None,
                f"the document holds more than {MAX_VALUES} values once its aliases (*name) "
                "are expanded: aliases nested in aliases (an alias bomb) or an alias that "
                "contains itself; write the values out, or use fewer nested aliases",
            )
        if isinstance(node, dict):
            stack.extend(node.values())
            stack.extend(node.keys())
        elif isinstance(node, list):
            stack.extend(node)
