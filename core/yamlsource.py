"""YAML loading that remembers where every value came from, so errors can say line:column."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.reader import ReaderError
from yaml.scanner import Scanner

from .errors import CatalogError

Path = tuple  # of str keys and int indexes

# PyYAML's line breaks: its marks count lines by these
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
# A number as YAML 1.2 and YAML 1.1 read alike. SafeLoader follows YAML 1.1, which also reads
# `1:30` as 90 (base 60), `010` as 8 (octal), `0x2`, `0b10` and `1_000` as numbers: an author
# meaning 1h30m or ten gets another value without a word.
_DECIMAL = re.compile(r"[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
                      r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
# Scalar constructors signal a bad value with plain Python exceptions, not ConstructorError
_BAD_SCALAR = (ValueError, TypeError, AttributeError, KeyError, OverflowError)

MAX_CATALOG_BYTES = 4 * 1024 * 1024  # of UTF-8 text
MAX_NESTING = 64  # YAML mappings and lists inside one another
# Values that aliases may repeat in a catalog: an alias stands for what its anchor names, so a
# few lines of nested aliases stand for billions of values (generated YAML uses a few)
MAX_REPEATED_VALUES = 50_000
# the names of the control characters, which have none in unicodedata
_CONTROL_NAMES = ("NUL SOH STX ETX EOT ENQ ACK BEL BS HT LF VT FF CR SO SI DLE DC1 DC2 DC3 DC4 "
                  "NAK SYN ETB CAN EM SUB ESC FS GS RS US").split()


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that a catalog may not use: reported without the 'invalid YAML' prefix."""


class _CatalogLoader(yaml.SafeLoader):
    """SafeLoader with bounded nesting (the composer recurses). Aliases are composed as shared
    nodes; `Source` bounds what they expand to."""

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if self._depth >= MAX_NESTING:
                raise _Refused(problem=f"mappings and lists are nested too deeply (more than "
                                       f"{MAX_NESTING} levels)", problem_mark=event.start_mark)
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)


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
        # numbers written in a YAML 1.1 form only (_DECIMAL): (path, where, text, value read)
        self.odd_numbers: list[tuple[Path, Mark, str, Any]] = []
        self._built: set[int] = set()  # nodes built once: another visit is an alias's
        self._open: set[int] = set()  # the lists and mappings being built, outermost first
        self._repeated = 0  # values built again for aliases
        _check_size(text, name)
        try:
            loader = _CatalogLoader(text)  # checks every character first
        except ReaderError as exc:
            raise _unacceptable(text, exc, name) from None
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
        if isinstance(node, yaml.CollectionNode):
            if id(node) in self._open:  # `a: &a [*a]`: it would expand forever
                raise CatalogError("an alias refers to a list or mapping that contains it",
                                   source=self.name, line=node.start_mark.line + 1,
                                   column=node.start_mark.column + 1)
            self._open.add(id(node))
            try:
                return self._build_once(loader, node, path)
            finally:
                self._open.discard(id(node))
        return self._build_once(loader, node, path)

    def _build_once(self, loader: yaml.SafeLoader, node: yaml.Node, path: Path) -> Any:
        if id(node) in self._built:
            self._repeated += 1
            if self._repeated > MAX_REPEATED_VALUES:
                raise CatalogError(f"aliases repeat more than {MAX_REPEATED_VALUES} values",
                                   source=self.name, line=node.start_mark.line + 1,
                                   column=node.start_mark.column + 1)
        self._built.add(id(node))
        self.marks[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):  # a list or mapping: unhashable
                    kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
                    raise self.error(path, f"keys must be strings, got {kind}", _mark(key_node))
                if key_node.tag == "tag:yaml.org,2002:merge":  # SafeLoader's, not Source's
                    raise _Refused(problem="merge keys (<<) are not supported: write the keys "
                                           "out, or put an alias where the whole value goes",
                                   problem_mark=key_node.start_mark)
                key = self._construct(loader, key_node)
                if key in out:
                    self.duplicates.append((path + (key,), _mark(key_node)))
                    continue
                self.key_marks[path + (key,)] = _mark(key_node)
                out[key] = self._build(loader, value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(loader, item, path + (i,)) for i, item in enumerate(node.value)]
        value = self._construct(loader, node)
        if node.tag in _NUMBER_TAGS and not _DECIMAL.fullmatch(node.value):
            self.odd_numbers.append((path, _mark(node), node.value, value))
        return value

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
        if isinstance(exc, _Refused):
            return CatalogError(reason, source=self.name, line=mark.line + 1,
                                column=mark.column + 1)
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


def _check_size(text: str, name: str) -> None:
    if len(text) * 4 > MAX_CATALOG_BYTES:  # else it surely fits: 4 bytes a character at most
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_CATALOG_BYTES:
            raise CatalogError(f"the catalog is {size} bytes, more than the "
                               f"{MAX_CATALOG_BYTES} allowed", source=name)


def _unacceptable(text: str, exc: ReaderError, name: str) -> CatalogError:
    """A character YAML refuses (NUL, other controls, surrogates, U+FFFE), at line:column."""
    position = exc.position
    line, start = 1, 0
    for brk in _LINE_BREAK.finditer(text, 0, position):
        line, start = line + 1, brk.end()
    code = exc.character if isinstance(exc.character, int) else ord(exc.character)
    if code < 0x20:
        label = f" ({_CONTROL_NAMES[code]})"
    elif code == 0x7F:
        label = " (DEL)"
    else:
        label = unicodedata.name(chr(code), "")
        label = f" ({label})" if label else ""
    return CatalogError(f"unacceptable character #x{code:04x}{label}", source=name, line=line,
                        column=position - start + 1)


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
