"""YAML loading that remembers where every value came from, so errors can say line:column."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.scanner import Scanner

from .errors import CatalogError

Path = tuple  # of str keys and int indexes

# PyYAML's line breaks: its marks count lines by these
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
# Scalar constructors signal a bad value with plain Python exceptions, not ConstructorError
_BAD_SCALAR = (ValueError, TypeError, AttributeError, KeyError, OverflowError)


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based
    style: str | None = None  # a scalar's: None (plain), "'" or '"' (quoted), "|" or ">" (block)
    one_line: bool = True
    index: int = 0  # characters of the text before the node


class Source:
    """A parsed YAML document: plain Python data plus the mark of every node by path.

    A duplicate mapping key does not stop the parse: the first value is kept and the key is
    listed in `duplicates`, for the reader of the document to report with what it knows of the
    place (inside an action, say). Everything else that is not valid YAML raises CatalogError.
    """

    def __init__(self, text: str, name: str = "<catalog>"):
        self.name = name
        self.text = text
        self.marks: dict[Path, Mark] = {}
        self.key_marks: dict[Path, Mark] = {}  # where each mapping key itself was written
        self.duplicates: list[tuple[Path, Mark]] = []  # (path, where the repeated key is)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise CatalogError("the catalog is empty", source=name)
            self.data = self._build(loader, node, ())
        except yaml.MarkedYAMLError as exc:
            raise self._invalid(exc) from None
        finally:
            loader.dispose()

    def _build(self, loader: yaml.SafeLoader, node: yaml.Node, path: Path) -> Any:
        self.marks[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):  # a list or mapping: unhashable
                    key = self._construct(loader, key_node)
                    raise self.error(path, f"keys must be strings, got {key!r}", _mark(key_node))
                key = self._construct(loader, key_node)
                if key in out:
                    self.duplicates.append((path + (key,), _mark(key_node)))
                    continue
                self.key_marks[path + (key,)] = _mark(key_node)
                out[key] = self._build(loader, value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(loader, item, path + (i,)) for i, item in enumerate(node.value)]
        return self._construct(loader, node)

    def _construct(self, loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        try:
            return loader.construct_object(node, deep=True)
        except _BAD_SCALAR:
            kind = node.tag.rsplit(":", 1)[-1]
            article = "an" if kind[:1] in ("a", "e", "i", "o", "u") else "a"
            raise yaml.MarkedYAMLError(problem=f"{node.value!r} is not {article} {kind}",
                                       problem_mark=node.start_mark) from None

    def _invalid(self, exc: yaml.MarkedYAMLError) -> CatalogError:
        mark = exc.problem_mark or exc.context_mark
        reason = exc.problem or exc.context
        began = exc.context_mark
        # "while scanning a quoted scalar" and the like: say where that began, when elsewhere
        if exc.problem and exc.context and exc.context.startswith("while ") and began \
                and mark and (began.line, began.column) != (mark.line, mark.column):
            reason += f" ({exc.context} that starts at {began.line + 1}:{began.column + 1})"
        return CatalogError(f"invalid YAML: {reason}", source=self.name,
                            line=mark.line + 1 if mark else 0,
                            column=mark.column + 1 if mark else 0)

    def error(self, path: Path, reason: str, mark: Mark | None = None, *,
              action_id: str | None = None, column_in_value: int = 0,
              at_key: bool = False) -> CatalogError:
        """A CatalogError located at `mark`, else at `path` (or at the nearest ancestor with a
        mark); at its key rather than its value with `at_key`, at a column of a scalar value
        (a rule's, counted in the value as parsed) with `column_in_value`."""
        if mark is None and at_key:
            mark = self.key_marks.get(path)
        if mark is not None:
            line, column = mark.line, mark.column
        else:
            value_mark = self.mark(path)
            line, column = (value_mark.line, value_mark.column) if value_mark else (0, 0)
            if value_mark and column_in_value:
                line, column = self._inside(value_mark, column_in_value)
        return CatalogError(reason, path=format_path(path), source=self.name, line=line,
                            column=column, action_id=action_id)

    def mark(self, path: Path) -> Mark | None:
        while path not in self.marks and path:
            path = path[:-1]
        return self.marks.get(path)

    def _inside(self, mark: Mark, column_in_value: int) -> tuple[int, int]:
        """line:column of the value's character at `column_in_value` (1-based)."""
        if mark.style in ("|", ">"):
            return self._inside_block(mark, column_in_value - 1)
        if not mark.one_line:  # a folded flow scalar: its start is as near as we get
            return mark.line, mark.column
        quoted = mark.style in ("'", '"')
        at = mark.index + int(quoted)
        for _ in range(column_in_value - 1):  # escapes write one value character in several
            at += _escape_width(self.text, at, mark.style)
        return mark.line, mark.column + at - mark.index

    def _inside_block(self, mark: Mark, before: int) -> tuple[int, int]:
        """The position after `before` value characters of a block scalar (| or >): its
        content starts on the line after the indicator, indented; a literal block keeps each
        line break, a folded one turns a single break into a space and keeps blank lines."""
        lines = _LINE_BREAK.split(self.text)
        indent: int | None = None
        at, blanks = 0, 0
        last = (mark.line, mark.column)
        for number, line in enumerate(lines[mark.line:], mark.line + 1):
            if not line.strip():
                blanks += 1
                continue
            width = len(line) - len(line.lstrip(" "))
            if indent is None:
                indent, at = width, blanks
            elif width < indent:
                break  # the block has ended
            else:
                at += max(blanks, 1) if mark.style == ">" else blanks + 1
            if before < at:  # on the line break that ended the previous line
                return last
            if before <= at + len(line) - indent:
                return number, indent + before - at + 1
            at += len(line) - indent
            last, blanks = (number, len(line) + 1), 0
        return last


def _mark(node: yaml.Node) -> Mark:
    start = node.start_mark
    style = node.style if isinstance(node, yaml.ScalarNode) else None
    return Mark(start.line + 1, start.column + 1, style, node.end_mark.line == start.line,
                start.index)


def _escape_width(text: str, at: int, style: str | None) -> int:
    """How many characters of the text write the value character at `at`."""
    if style == "'" and text.startswith("''", at):
        return 2
    if style == '"' and text[at] == "\\":
        return 2 + Scanner.ESCAPE_CODES.get(text[at + 1], 0)
    return 1


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
