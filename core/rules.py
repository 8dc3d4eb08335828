"""The rule language: parse, type-check, compile to bytecode for the Cython VM, and evaluate.

A catalog never runs Python. Rules are small expressions over profile attributes and features,
request context and action attributes::

    since_cart < 2h and tier in ["gold", "platinum"] and not known(since_purchase)

Every value is a float64 in the VM: numbers as they are, booleans as 1.0/0.0, strings as codes
from the catalog's string table, timestamps as epoch seconds, and *unknown* as NaN. A comparison
with an unknown value is false, so a customer who never added to a cart does not match
`since_cart < 2h`. `evaluate` walks the syntax tree directly; it is the oracle the compiled
bytecode is tested against.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Sequence

from ._kernel import MAX_STACK_SUPPORTED
from .errors import RuleError

# ---------------------------------------------------------------------------------------------
# Types

NUM, BOOL, STR, TIME = "number", "boolean", "string", "timestamp"


@dataclass(frozen=True)
class Ref:
    """What a name in a rule resolves to: where the VM loads it from and its type."""

    source: str  # "profile", "context", "action" or "now"
    index: int
    type: str
    vocabulary: tuple[str, ...] | None = None  # closed set of strings, when declared
    name: str = ""


class Unusable(Exception):
    """A resolver's answer for a name that exists but cannot be read by a rule."""


Resolver = Callable[[str], "Ref | None"]  # None: unknown; raises Unusable

DURATION_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
# The widest an int or float value may be, catalog and input alike: ints stay exact in a float64
# slot (2**53 is about 9e15), and sums of many such values stay finite. Here, not in catalog.py
# (which re-exports it), because a rule's literals are held to it too and catalog.py imports
# this module.
MAX_NUMBER = 1e12

# ---------------------------------------------------------------------------------------------
# Lexer

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<duration>\d+(?:\.\d+)?[smhdw](?![A-Za-z0-9_]))
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<string>"[^"\\]*"|'[^'\\]*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
  | (?P<op><=|>=|==|!=|<|>|\+|-|\*|/|\(|\)|\[|\]|,)
    """,
    re.VERBOSE,  # Unicode digits and spaces, as catalogs were saved with: see refused_number
)
KEYWORDS = {"and", "or", "not", "in", "between", "true", "false"}


@dataclass(frozen=True)
class Token:
    kind: str  # number, duration, string, name, op, keyword, end
    text: str
    column: int  # 1-based


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            ch = text[pos]
            if ch in "\"'":  # rules have no escapes, so a backslash cannot be what was meant
                end = text.find(ch, pos + 1)
                backslash = text.find("\\", pos + 1, len(text) if end < 0 else end)
                if backslash >= 0:
                    raise RuleError("backslashes are not allowed in strings", backslash + 1)
                raise RuleError("unterminated string", pos + 1)
            raise RuleError(f"unexpected character {ch!r}", pos + 1)
        kind = m.lastgroup
        if kind != "ws":
            word = m.group()
            if kind == "name" and word in KEYWORDS:
                kind = "keyword"
            tokens.append(Token(kind, word, pos + 1))
        pos = m.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


# ---------------------------------------------------------------------------------------------
# Syntax tree


@dataclass
class Node:
    column: int


@dataclass
class Const(Node):
    value: float | str | bool
    type: str


@dataclass
class Name(Node):
    ref: Ref


@dataclass
class Unary(Node):
    op: str  # "-" or "not"
    operand: Node


@dataclass
class Binary(Node):
    op: str  # + - * / == != < <= > >= and or
    left: Node
    right: Node


@dataclass
class Member(Node):
    operand: Node
    items: list[Const]
    negate: bool


@dataclass
class Between(Node):
    operand: Node
    low: Node
    high: Node


@dataclass
class Call(Node):
    function: str
    args: list[Node]


@dataclass
class Function:
    arity: int
    signature: Callable[[list[str], int], str]  # argument types, column -> result type


def _time_to_num(types: list[str], column: int) -> str:
    _expect(types[0], (TIME,), "its argument", column)
    return NUM


def _num_to_num(types: list[str], column: int) -> str:
    for t in types:
        _expect(t, (NUM,), "its arguments", column)
    return NUM


def _any_to_bool(types: list[str], column: int) -> str:
    return BOOL


def _same_type(types: list[str], column: int) -> str:
    if types[0] != types[1]:
        raise RuleError(f"coalesce needs arguments of one type, got {types[0]} and {types[1]}",
                        column)
    return types[0]


FUNCTIONS = {
    "days_since": Function(1, _time_to_num),
    "hours_since": Function(1, _time_to_num),
    "minutes_since": Function(1, _time_to_num),
    "known": Function(1, _any_to_bool),
    "coalesce": Function(2, _same_type),
    "min": Function(2, _num_to_num),
    "max": Function(2, _num_to_num),
    "abs": Function(1, _num_to_num),
    "log1p": Function(1, _num_to_num),
}


def _expect(actual: str, allowed: Sequence[str], what: str, column: int) -> None:
    if actual not in allowed:
        raise RuleError(f"{what} must be {' or '.join(allowed)}, got {actual}", column)


# ---------------------------------------------------------------------------------------------
# Parser (recursive descent; precedence from loose to tight: or, and, not, comparison, +-, */)

_COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}

MAX_RULE_LENGTH = 4096  # characters of a rule's text
MAX_RULE_DEPTH = 64  # nesting: parentheses, calls, 'not', '-', and the operators of the tree
# A catalog's rules in all, each counted once per action that runs it (YAML aliases let a
# small text repeat a long rule): the compiler emits, and every decision runs, that much code.
# The default catalog holds 624 nodes and 19 list items; 10,000 actions with rules like its
# would hold about 130,000 nodes.
MAX_CATALOG_RULE_NODES = 500_000  # every node of the syntax trees, list items included
MAX_CATALOG_LIST_ITEMS = 250_000  # the items of `in [...]` lists (the set pool)
_TOO_DEEP = f"the rule is nested too deeply (more than {MAX_RULE_DEPTH} levels)"


class _Parser:
    def __init__(self, text: str, resolve: Resolver, intern: Callable[[str], int]):
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0  # of the recursion, bounded so that no rule can exhaust the stack
        self.resolve = resolve
        self.intern = intern

    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def take(self) -> Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def accept(self, text: str) -> Token | None:
        if self.tok.kind in ("op", "keyword") and self.tok.text == text:
            return self.take()
        return None

    def expect(self, text: str) -> Token:
        tok = self.accept(text)
        if tok is None:
            raise RuleError(f"expected '{text}', found {_describe(self.tok)}", self.tok.column)
        return tok

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise RuleError("empty rule", 1)
        node = self.or_expr()
        if self.tok.kind != "end":
            raise RuleError(f"unexpected {_describe(self.tok)}", self.tok.column)
        return node

    def or_expr(self) -> Node:
        self.enter()
        node = self.and_expr()
        while (tok := self.accept("or")) is not None:
            node = Binary(tok.column, "or", node, self.and_expr())
        self.depth -= 1
        return node

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_RULE_DEPTH:
            raise RuleError(_TOO_DEEP, self.tok.column)

    def and_expr(self) -> Node:
        node = self.not_expr()
        while (tok := self.accept("and")) is not None:
            node = Binary(tok.column, "and", node, self.not_expr())
        return node

    def not_expr(self) -> Node:
        tok = self.accept("not")
        if tok is not None:
            self.enter()
            node = Unary(tok.column, "not", self.not_expr())
            self.depth -= 1
            return node
        return self.comparison()

    def comparison(self) -> Node:
        left = self.additive()
        tok = self.tok
        if tok.kind == "op" and tok.text in _COMPARISONS:
            self.take()
            return Binary(tok.column, tok.text, left, self.additive())
        if tok.kind == "keyword" and tok.text == "between":
            self.take()
            low = self.additive()
            self.expect("and")
            return Between(tok.column, left, low, self.additive())
        if tok.kind == "keyword" and tok.text == "in":
            self.take()
            return Member(tok.column, left, self.literal_list(), negate=False)
        if tok.kind == "keyword" and tok.text == "not" and self.tokens[self.pos + 1].text == "in":
            self.pos += 2
            return Member(tok.column, left, self.literal_list(), negate=True)
        return left

    def literal_list(self) -> list[Const]:
        self.expect("[")
        items = [self.literal()]
        while self.accept(","):
            items.append(self.literal())
        self.expect("]")
        return items

    def literal(self) -> Const:
        tok = self.tok
        negative = self.accept("-") is not None
        node = self.atom()
        if not isinstance(node, Const) or (negative and node.type != NUM):
            raise RuleError("a list may hold only literal values", tok.column)
        if negative:
            node = Const(tok.column, -node.value, NUM)
        return node

    def additive(self) -> Node:
        node = self.multiplicative()
        while self.tok.kind == "op" and self.tok.text in "+-":
            tok = self.take()
            node = Binary(tok.column, tok.text, node, self.multiplicative())
        return node

    def multiplicative(self) -> Node:
        node = self.unary()
        while self.tok.kind == "op" and self.tok.text in "*/":
            tok = self.take()
            node = Binary(tok.column, tok.text, node, self.unary())
        return node

    def unary(self) -> Node:
        tok = self.accept("-")
        if tok is not None:
            self.enter()
            node = Unary(tok.column, "-", self.unary())
            self.depth -= 1
            return node
        return self.atom()

    def atom(self) -> Node:
        tok = self.take()
        if tok.kind in ("number", "duration"):
            return Const(tok.column, _number(tok), NUM)
        if tok.kind == "string":
            return Const(tok.column, tok.text[1:-1], STR)
        if tok.kind == "keyword" and tok.text in ("true", "false"):
            return Const(tok.column, tok.text == "true", BOOL)
        if tok.kind == "op" and tok.text == "(":
            node = self.or_expr()
            self.expect(")")
            return node
        if tok.kind == "name":
            if self.tok.kind == "op" and self.tok.text == "(":
                return self.call(tok)
            try:
                ref = self.resolve(tok.text)
            except Unusable as exc:
                raise RuleError(str(exc), tok.column) from None
            if ref is None:
                raise RuleError(f"unknown name '{tok.text}'", tok.column)
            return Name(tok.column, ref)
        raise RuleError(f"unexpected {_describe(tok)}", tok.column)

    def call(self, name: Token) -> Node:
        fn = FUNCTIONS.get(name.text)
        if fn is None:
            known = ", ".join(sorted(FUNCTIONS))
            raise RuleError(f"unknown function '{name.text}' (functions: {known})", name.column)
        self.expect("(")
        args = []
        if self.accept(")") is None:
            args.append(self.or_expr())
            while self.accept(","):
                args.append(self.or_expr())
            self.expect(")")
        if len(args) != fn.arity:
            raise RuleError(f"{name.text}() takes {fn.arity} argument"
                            f"{'s' if fn.arity > 1 else ''}, got {len(args)}", name.column)
        return Call(name.column, name.text, args)


def _number(tok: Token) -> float:
    """A number or duration token's value (a duration in seconds)."""
    if tok.kind == "duration":
        return float(tok.text[:-1]) * DURATION_UNITS_S[tok.text[-1]]
    return float(tok.text)


def refused_number(text: str) -> RuleError | None:
    """The first number a rule writes past MAX_NUMBER (1e999 reads as inf), or with digits
    other than ASCII ones ("١" and "１", which float() reads as 1), as the error a catalog
    coming in new is refused with. The parser takes it as written, so that a catalog saved
    before these checks still loads (catalog.py's refusals)."""
    try:
        tokens = tokenize(text)
    except RuleError:
        return None  # the compiler says what is wrong with the rule
    for tok in tokens:
        if tok.kind not in ("number", "duration"):
            continue
        shown = tok.text if len(tok.text) <= 40 else tok.text[:37] + "..."
        if not tok.text.isascii():
            return RuleError(f"digits are ASCII ones: {shown}", tok.column)
        if not abs(_number(tok)) <= MAX_NUMBER:
            return RuleError(f"number out of range: {shown} (at most {MAX_NUMBER:g})",
                             tok.column)
    return None


def _describe(tok: Token) -> str:
    return "end of rule" if tok.kind == "end" else f"'{tok.text}'"


# ---------------------------------------------------------------------------------------------
# Type checking


def type_of(node: Node) -> str:
    """The node's type; raises RuleError where the rule mixes types."""
    if isinstance(node, Const):
        return node.type
    if isinstance(node, Name):
        return node.ref.type
    if isinstance(node, Unary):
        t = type_of(node.operand)
        if node.op == "not":
            _expect(t, (BOOL,), "'not' operand", node.column)
            return BOOL
        _expect(t, (NUM,), "'-' operand", node.column)
        return NUM
    if isinstance(node, Binary):
        return _binary_type(node)
    if isinstance(node, Member):
        t = type_of(node.operand)
        _expect(t, (NUM, STR), "'in' operand", node.column)
        for item in node.items:
            if item.type != t:
                raise RuleError(f"list item {item.value!r} is a {item.type}, the operand a {t}",
                                item.column)
            _check_vocabulary(node.operand, item)
        return BOOL
    if isinstance(node, Between):
        types = [type_of(n) for n in (node.operand, node.low, node.high)]
        if types[0] not in (NUM, TIME) or len(set(types)) != 1:
            raise RuleError(f"'between' needs three numbers or three timestamps, got "
                            f"{', '.join(types)}", node.column)
        return BOOL
    if isinstance(node, Call):
        result = FUNCTIONS[node.function].signature([type_of(a) for a in node.args],
                                                    node.column)
        if node.function == "coalesce":  # a literal default must be a value the field can take
            for a, b in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
                if isinstance(b, Const):
                    _check_vocabulary(a, b)
        return result
    raise TypeError(node)


def _binary_type(node: Binary) -> str:
    lt, rt = type_of(node.left), type_of(node.right)
    op = node.op
    if op in ("and", "or"):
        _expect(lt, (BOOL,), f"'{op}' left operand", node.column)
        _expect(rt, (BOOL,), f"'{op}' right operand", node.column)
        return BOOL
    if op in _COMPARISONS:
        if lt != rt:
            raise RuleError(f"cannot compare {lt} with {rt}", node.column)
        if lt in (STR, BOOL) and op not in ("==", "!="):
            raise RuleError(f"a {lt} can only be compared with == or !=", node.column)
        for a, b in ((node.left, node.right), (node.right, node.left)):
            if isinstance(b, Const):
                _check_vocabulary(a, b)
        return BOOL
    if lt == rt == NUM:
        return NUM
    if op == "-" and lt == rt == TIME:
        return NUM
    if op in "+-" and lt == TIME and rt == NUM:
        return TIME
    if op == "+" and lt == NUM and rt == TIME:
        return TIME
    raise RuleError(f"cannot apply '{op}' to {lt} and {rt}", node.column)


def _check_vocabulary(operand: Node, literal: Const) -> None:
    """A string literal compared with a field of declared values must be one of them: any
    other could never match, and the rule would silently never be true."""
    vocabulary = _vocabulary(operand)
    if vocabulary is not None and literal.type == STR and literal.value not in vocabulary[1]:
        raise RuleError(f"'{literal.value}' is not a value of {vocabulary[0]} "
                        f"(values: {', '.join(vocabulary[1])})", literal.column)


def _vocabulary(node: Node) -> tuple[str, tuple[str, ...]] | None:
    """(what, values) when every string `node` can give comes from declared values."""
    if isinstance(node, Name):
        vocabulary = node.ref.vocabulary
        return None if vocabulary is None else (node.ref.name, vocabulary)
    if isinstance(node, Call) and node.function == "coalesce":
        fields = [_vocabulary(a) for a in node.args if not isinstance(a, Const)]
        if fields and None not in fields:  # a literal argument was checked against them
            return (" or ".join(f[0] for f in fields),
                    tuple(dict.fromkeys(v for f in fields for v in f[1])))
    return None


def parse(text: str, resolve: Resolver, intern: Callable[[str], int], want: str) -> Node:
    """Parse and type-check `text`; `want` is the type the whole rule must have."""
    if len(text) > MAX_RULE_LENGTH:
        raise RuleError(f"the rule is {len(text)} characters long, more than the "
                        f"{MAX_RULE_LENGTH} allowed", 1)
    node = _Parser(text, resolve, intern).parse()
    _check_depth(node)
    got = type_of(node)
    if got != want:
        raise RuleError(f"the rule must give a {want}, it gives a {got}", 1)
    _intern_strings(node, intern)
    return node


def _check_depth(root: Node) -> None:
    """A long chain of operators ('a + b + c ...') parses in a loop but makes a tree as deep as
    it is long, which type checking and code generation recurse into: bound it (without
    recursing here)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_RULE_DEPTH:
            raise RuleError(_TOO_DEEP, node.column)
        stack.extend((child, depth + 1) for child in _children(node))


def _intern_strings(node: Node, intern: Callable[[str], int]) -> None:
    for child in walk(node):
        if isinstance(child, Const) and child.type == STR:
            intern(child.value)


def size(root: Node) -> tuple[int, int]:
    """The tree's nodes, list items included, and its list items."""
    nodes = items = 0
    for node in walk(root):
        nodes += 1
        if isinstance(node, Member):
            items += len(node.items)
    return nodes, items


def walk(node: Node):
    yield node
    for child in _children(node):
        yield from walk(child)


def _children(node: Node) -> list[Node]:
    if isinstance(node, Unary):
        return [node.operand]
    if isinstance(node, Binary):
        return [node.left, node.right]
    if isinstance(node, Member):
        return [node.operand, *node.items]
    if isinstance(node, Between):
        return [node.operand, node.low, node.high]
    if isinstance(node, Call):
        return list(node.args)
    return []


# ---------------------------------------------------------------------------------------------
# Bytecode: (op, arg) int32 pairs for a stack VM; _kernel.pyx mirrors these numbers.


class Op(IntEnum):
    CONST = 1  # push consts[arg]
    PROFILE = 2  # push the profile view's slot arg
    CONTEXT = 3  # push context[arg]
    ACTION = 4  # push the current action's attribute arg
    NOW = 5
    ADD = 6
    SUB = 7
    MUL = 8
    DIV = 9
    NEG = 10
    EQ = 11
    NE = 12
    LT = 13
    LE = 14
    GT = 15
    GE = 16
    AND = 17
    OR = 18
    NOT = 19
    IN = 20  # pop x; push x in sets[arg]
    NOT_IN = 21
    BETWEEN = 22  # pop hi, lo, x
    SINCE = 23  # pop t; push (now - t) / consts[arg]
    KNOWN = 24
    COALESCE = 25
    MIN = 26
    MAX = 27
    ABS = 28
    LOG1P = 29


_BINARY_OPS = {"+": Op.ADD, "-": Op.SUB, "*": Op.MUL, "/": Op.DIV, "==": Op.EQ, "!=": Op.NE,
               "<": Op.LT, "<=": Op.LE, ">": Op.GT, ">=": Op.GE, "and": Op.AND, "or": Op.OR}
_SOURCE_OPS = {"profile": Op.PROFILE, "context": Op.CONTEXT, "action": Op.ACTION}
_SINCE_UNITS_S = {"days_since": 86400.0, "hours_since": 3600.0, "minutes_since": 60.0}
_SIMPLE_CALLS = {"known": Op.KNOWN, "coalesce": Op.COALESCE, "min": Op.MIN, "max": Op.MAX,
                 "abs": Op.ABS, "log1p": Op.LOG1P}

MAX_STACK = MAX_STACK_SUPPORTED  # the kernel's C stack (_kernel.pxd): values a rule holds at once


@dataclass
class Program:
    """Bytecode for many rules, with shared constant and set pools."""

    code: list[int] = field(default_factory=list)
    consts: list[float] = field(default_factory=list)
    sets: list[float] = field(default_factory=list)
    set_ranges: list[tuple[int, int]] = field(default_factory=list)

    def add(self, node: Node, intern: Callable[[str], int]) -> tuple[int, int]:
        """Append the code of one rule; returns its (start, end) in `code` (int32 units)."""
        start = len(self.code)
        self._emit(node, intern)
        return start, len(self.code)

    def _const(self, value: float) -> int:
        self.consts.append(value)
        return len(self.consts) - 1

    def _emit(self, node: Node, intern: Callable[[str], int]) -> int:
        """Emit code for node; returns the stack depth it needs, at most MAX_STACK: past it
        RuleError at the innermost node that needs more."""
        depth = self._emit_node(node, intern)
        if depth > MAX_STACK:
            raise RuleError(f"the rule is nested too deeply here: it holds {depth} values at "
                            f"once, the most is {MAX_STACK} (nest on the left: (a + b) + c "
                            f"holds fewer than a + (b + c))", node.column)
        return depth

    def _emit_node(self, node: Node, intern: Callable[[str], int]) -> int:
        if isinstance(node, Const):
            self.code += [Op.CONST, self._const(literal_value(node, intern))]
            return 1
        if isinstance(node, Name):
            if node.ref.source == "now":
                self.code += [Op.NOW, 0]
            else:
                self.code += [_SOURCE_OPS[node.ref.source], node.ref.index]
            return 1
        if isinstance(node, Unary):
            depth = self._emit(node.operand, intern)
            self.code += [Op.NOT if node.op == "not" else Op.NEG, 0]
            return depth
        if isinstance(node, Binary):
            left = self._emit(node.left, intern)
            right = self._emit(node.right, intern)
            self.code += [_BINARY_OPS[node.op], 0]
            return max(left, right + 1)
        if isinstance(node, Member):
            depth = self._emit(node.operand, intern)
            start = len(self.sets)
            self.sets += [literal_value(item, intern) for item in node.items]
            self.set_ranges.append((start, len(self.sets)))
            self.code += [Op.NOT_IN if node.negate else Op.IN, len(self.set_ranges) - 1]
            return depth
        if isinstance(node, Between):
            depths = [self._emit(n, intern) for n in (node.operand, node.low, node.high)]
            self.code += [Op.BETWEEN, 0]
            return max(depths[0], depths[1] + 1, depths[2] + 2)
        if isinstance(node, Call):
            depths = [self._emit(arg, intern) + i for i, arg in enumerate(node.args)]
            if node.function in _SINCE_UNITS_S:
                self.code += [Op.SINCE, self._const(_SINCE_UNITS_S[node.function])]
            else:
                self.code += [_SIMPLE_CALLS[node.function], 0]
            return max(depths)
        raise TypeError(node)


def literal_value(node: Const, intern: Callable[[str], int]) -> float:
    if node.type == STR:
        return float(intern(node.value))
    return float(node.value)


# ---------------------------------------------------------------------------------------------
# Tree-walking evaluation: the reference semantics


@dataclass
class Frame:
    """What a rule can see while it runs."""

    profile: Sequence[float]
    context: Sequence[float]
    action: Sequence[float]
    now: float


def truth(x: float) -> bool:
    return x == x and x != 0.0


def evaluate(node: Node, frame: Frame, intern: Callable[[str], int]) -> float:
    if isinstance(node, Const):
        return literal_value(node, intern)
    if isinstance(node, Name):
        ref = node.ref
        if ref.source == "now":
            return frame.now
        return float(getattr(frame, ref.source)[ref.index])
    if isinstance(node, Unary):
        x = evaluate(node.operand, frame, intern)
        return float(not truth(x)) if node.op == "not" else -x
    if isinstance(node, Binary):
        a = evaluate(node.left, frame, intern)
        b = evaluate(node.right, frame, intern)
        return _BINARY_EVAL[node.op](a, b)
    if isinstance(node, Member):
        x = evaluate(node.operand, frame, intern)
        if x != x:
            return 0.0
        found = any(x == literal_value(item, intern) for item in node.items)
        return float(found != node.negate)
    if isinstance(node, Between):
        x, lo, hi = (evaluate(n, frame, intern) for n in (node.operand, node.low, node.high))
        return float(lo <= x <= hi)
    if isinstance(node, Call):
        args = [evaluate(a, frame, intern) for a in node.args]
        if node.function in _SINCE_UNITS_S:
            return (frame.now - args[0]) / _SINCE_UNITS_S[node.function]
        return _CALL_EVAL[node.function](*args)
    raise TypeError(node)


def ieee_div(a: float, b: float) -> float:
    """Division as C does it: x/0 is ±inf, 0/0 is NaN (Python would raise)."""
    if b == 0.0:
        if a != a or a == 0.0:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _nan_or(fn: Callable[[float, float], float]) -> Callable[[float, float], float]:
    return lambda a, b: math.nan if a != a or b != b else fn(a, b)


_BINARY_EVAL: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": ieee_div,
    "==": lambda a, b: float(a == b),
    "!=": lambda a, b: float(a == a and b == b and a != b),
    "<": lambda a, b: float(a < b),
    "<=": lambda a, b: float(a <= b),
    ">": lambda a, b: float(a > b),
    ">=": lambda a, b: float(a >= b),
    "and": lambda a, b: float(truth(a) and truth(b)),
    "or": lambda a, b: float(truth(a) or truth(b)),
}

_CALL_EVAL: dict[str, Callable[..., float]] = {
    "known": lambda x: float(x == x),
    "coalesce": lambda a, b: a if a == a else b,
    "min": _nan_or(min),
    "max": _nan_or(max),
    "abs": abs,
    "log1p": lambda x: math.log1p(x) if x > -1.0 else (-math.inf if x == -1.0 else math.nan),
}
