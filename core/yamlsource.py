"""YAML loading that remembers where every value came from, so errors can say line:column."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from .errors import CatalogError

Path = tuple  # of str keys and int indexes


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based
    quoted: bool = False  # the scalar was written in quotes: its text starts one column later
    one_line: bool = True


class Source:
    """A parsed YAML document: plain Python data plus the mark of every node by path."""

    def __init__(self, text: str, name: str = "<catalog>"):
        self.name = name
        self.marks: dict[Path, Mark] = {}
        self.key_marks: dict[Path, Mark] = {}  # where each mapping key itself was written
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise CatalogError(f"invalid YAML: {exc.problem or exc.context}", source=name,
                               line=mark.line + 1 if mark else 0,
                               column=mark.column + 1 if mark else 0) from None
        finally:
            loader.dispose()
        if node is None:
            raise CatalogError("the catalog is empty", source=name)
        self.data = self._build(loader, node, ())

    def _build(self, loader: yaml.SafeLoader, node: yaml.Node, path: Path) -> Any:
        start = node.start_mark
        self.marks[path] = Mark(start.line + 1, start.column + 1,
                                quoted=getattr(node, "style", None) in ("'", '"'),
                                one_line=node.end_mark.line == start.line)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node)
                if key in out:
                    raise self.error(path + (key,), f"duplicate key '{key}'", key_node)
                self.key_marks[path + (key,)] = Mark(key_node.start_mark.line + 1,
                                                     key_node.start_mark.column + 1)
                out[key] = self._build(loader, value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(loader, item, path + (i,)) for i, item in enumerate(node.value)]
        return loader.construct_object(node)

    def error(self, path: Path, reason: str, node: yaml.Node | None = None, *,
              action_id: str | None = None, column_in_value: int = 0,
              at_key: bool = False) -> CatalogError:
        """A CatalogError located at `path` (or at the nearest ancestor with a mark); at its
        key rather than its value with `at_key`, at a column inside a one-line value with
        `column_in_value`."""
        if node is not None:
            line, column = node.start_mark.line + 1, node.start_mark.column + 1
        elif at_key and path in self.key_marks:
            line, column = self.key_marks[path].line, self.key_marks[path].column
        else:
            mark = self.mark(path)
            line, column = (mark.line, mark.column) if mark else (0, 0)
            if mark and column_in_value and mark.one_line:
                column += column_in_value - 1 + int(mark.quoted)
        return CatalogError(reason, path=format_path(path), source=self.name, line=line,
                            column=column, action_id=action_id)

    def mark(self, path: Path) -> Mark | None:
        while path not in self.marks and path:
            path = path[:-1]
        return self.marks.get(path)


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
