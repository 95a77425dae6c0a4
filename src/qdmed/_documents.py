"""Input documents (panels, probes: YAML; probes, calibrations: JSON) read refusing a key
given twice in one mapping. PyYAML keeps the last of two equal keys without a word (as the YAML
1.1 loader it implements does), so a panel edited to give HER2 a second line silently lost
ER's and scored HER2 from ER's label (a review); YAML 1.2 requires keys to be unique. Python's json keeps the last too
(RFC 8259 says names SHOULD be unique, and what a parser does with repeats is undefined)."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["safe_load_unique", "unique_json_pairs"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a repeated key (its two lines named)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<": merged, not a key
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base loader says so
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        f"while reading the mapping that starts on line "
                        f"{node.start_mark.line + 1}", node.start_mark,
                        f"key {key!r} is given twice (lines {first} and {line})",
                        key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that raises ``yaml.constructor.ConstructorError`` (a
    ``yaml.YAMLError``, its ``problem_mark`` on the second key) for a key given twice."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def unique_json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads`: the object as a dict, ValueError for a
    name given twice."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} is given twice in one object")
        out[k] = v
    return out
