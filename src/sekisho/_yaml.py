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


def load(stream: str | bytes | IO[str] | IO[bytes]) -> Any:
    """``yaml.safe_load``, refusing repeated keys."""
    return yaml.load(stream, Loader=StrictLoader)
