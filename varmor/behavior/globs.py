"""AppArmor path globs as automata: does a path match, and can two globs name one path?

The advisor asks whether a catalog deny rule (`/proc/**/mounts`) and a recorded path,
itself possibly a glob (`/proc/@{pid}/mounts`), can name the same file. Containment in
either direction is not enough (neither contains the other in `/tmp/a*` vs `/tmp/*b`), so
both are compiled to automata and their product is searched for a common path, which is
returned as a witness. The translation follows the parser's own (`convert_aaregex_to_pcre`
in apparmor's parser_regex.c), including its one subtlety: a `*` or `**` that fills a
whole path segment (after `/`, before `/` or the end) must match at least one character,
so `/etc/**` does not match `/etc/` and `/**/sh` does not match `/sh`.

Variables: `@{pid}` and `@{tid}` are one or more digits; `@{VARMOR_DISK_DEVICES}` (set
per node from /proc/partitions) is any `/dev/NAME` path with a device name, less the
devices every container has (`/dev/null`, `/dev/pts/...`), which are never host disks;
any other variable may be any text. Each is a superset of what it can hold, so an answer
of "disjoint" is always right. Pure: no I/O.
"""

from __future__ import annotations

import itertools
import re
import string
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

DISK_DEVICES = "@{VARMOR_DISK_DEVICES}"
DIGIT_VARIABLES = frozenset({"pid", "tid"})
# Devices the OCI runtime spec and Kubernetes put in every container: character devices,
# directories and links, so never a name in /proc/partitions.
NOT_DISKS = (
    "/dev/{null,zero,full,random,urandom,tty,console,ptmx,stdin,stdout,stderr,core,termination-log,"
    "{pts,shm,mqueue,fd}{,/**}}"
)
_VARIABLE = re.compile(r"@\{([A-Za-z0-9_]+)\}")
_DEVICE_FIRST = frozenset(string.ascii_letters + string.digits)
_DEVICE_REST = _DEVICE_FIRST | frozenset("._+:-")
_WITNESS_CHARS = "xyzqjkvw" + string.ascii_letters + string.digits + "._-"
_GLOB_CHAR = re.compile(r"[\\*?\[\]{},@]")  # may be special: where literal text may end
_MAX_STEPS = 1 << 16
_SEGMENT = re.compile(r"[^/\\\[\]{}@]*")  # literal text, `*` and `?` only


class GlobError(ValueError):
    """Not a pattern AppArmor would accept (an unclosed class or group, a stray `]`)."""


@dataclass(frozen=True)
class CharSet:
    """A set of characters: `chars`, or every character but `chars` when `negated`."""

    chars: frozenset[str]
    negated: bool = False

    def __contains__(self, char: str | None) -> bool:
        """`None` stands for any character outside every set in play."""
        if char is None:
            return self.negated
        return (char in self.chars) != self.negated


NOT_SLASH = CharSet(frozenset("/"), negated=True)
ANY = CharSet(frozenset(), negated=True)
DIGITS = CharSet(frozenset(string.digits))


@dataclass
class Nfa:
    """States are indexes; `edges[s]` are (chars, next) and `eps[s]` are empty moves."""

    edges: list[list[tuple[CharSet, int]]] = field(default_factory=list)
    eps: list[list[int]] = field(default_factory=list)
    start: int = 0
    accept: int = 0
    # Subset steps already taken: a catalog pattern meets thousands of recorded paths.
    _steps: dict[tuple[frozenset[int], str | None], frozenset[int]] = field(default_factory=dict, repr=False)

    def state(self) -> int:
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        seen = set(states)
        todo = list(seen)
        while todo:
            for nxt in self.eps[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return frozenset(seen)

    def step(self, states: frozenset[int], char: str | None) -> frozenset[int]:
        found = self._steps.get((states, char))
        if found is None:
            if len(self._steps) > _MAX_STEPS:
                self._steps.clear()
            found = self.closure(nxt for s in states for chars, nxt in self.edges[s] if char in chars)
            self._steps[states, char] = found
        return found

    def mentioned(self, states: frozenset[int]) -> set[str]:
        return {c for s in states for chars, _ in self.edges[s] for c in chars.chars}


@dataclass(frozen=True)
class Glob:
    """A compiled pattern: the paths `positive` accepts and `negative` (if any) does not.
    `prefix`/`suffix` are literal text every such path starts/ends with (cheap filters)."""

    positive: Nfa
    negative: Nfa | None
    prefix: str
    suffix: str
    literal: bool


class _Parser:
    """One pass over the pattern, building the automaton as it goes (Thompson style)."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0
        self.nfa = Nfa()
        self.after_slash = False  # the last thing emitted was a literal `/`
        self.top: list[str | None] = []  # top-level elements: a literal char, or None

    def parse(self) -> Nfa:
        start, end = self.sequence(depth=0)  # at the top level it reads to the end
        self.nfa.start, self.nfa.accept = start, end
        return self.nfa

    def sequence(self, depth: int) -> tuple[int, int]:
        start = end = self.nfa.state()
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if depth and char in ",}":
                break
            end = self.element(end, depth)
        return start, end

    def link(self, end: int, chars: CharSet, literal: str | None, depth: int) -> int:
        nxt = self.nfa.state()
        self.nfa.edges[end].append((chars, nxt))
        self.after_slash = literal == "/"
        if depth == 0:
            self.top.append(literal)
        return nxt

    def loop(self, end: int, chars: CharSet, depth: int) -> int:
        """Zero or more of `chars` after `end`."""
        self.nfa.edges[end].append((chars, end))
        nxt = self.nfa.state()
        self.nfa.eps[end].append(nxt)
        self.after_slash = False
        if depth == 0:
            self.top.append(None)
        return nxt

    def element(self, end: int, depth: int) -> int:
        text, char = self.text, self.text[self.pos]
        self.pos += 1
        if char == "\\":
            if self.pos >= len(text):
                raise GlobError(f"{text!r}: trailing '\\'")
            self.pos += 1
            return self.link(end, CharSet(frozenset(text[self.pos - 1])), text[self.pos - 1], depth)
        if char == "*":
            double = text.startswith("*", self.pos)
            run_end = self.pos
            while run_end < len(text) and text[run_end] == "*":
                run_end += 1
            if self.after_slash and (run_end == len(text) or text[run_end] == "/"):
                end = self.link(end, NOT_SLASH, None, depth)  # a whole segment: not empty
            self.pos += int(double)
            return self.loop(end, ANY if double else NOT_SLASH, depth)
        if char == "?":
            return self.link(end, NOT_SLASH, None, depth)
        if char == "[":
            return self.link(end, self.char_class(), None, depth)
        if char == "{":
            return self.group(end, depth)
        if char == "@" and (match := _VARIABLE.match(text, self.pos - 1)):
            self.pos = match.end()
            return self.variable(end, match[1], depth)
        if char in "]}":
            raise GlobError(f"{text!r}: {char!r} without its opening bracket")
        return self.link(end, CharSet(frozenset(char)), char, depth)

    def char_class(self) -> CharSet:
        text, chars = self.text, set[str]()
        negated = text.startswith("^", self.pos)
        self.pos += int(negated)
        first = True
        while True:
            if self.pos >= len(text):
                raise GlobError(f"{text!r}: unclosed '['")
            char = text[self.pos]
            self.pos += 1
            if char == "]" and not first:
                return CharSet(frozenset(chars), negated)
            if char == "\\" and self.pos < len(text):
                char = text[self.pos]
                self.pos += 1
            first = False
            if text.startswith("-", self.pos) and self.pos + 1 < len(text) and text[self.pos + 1] != "]":
                high = text[self.pos + 1]
                self.pos += 2
                chars.update(chr(c) for c in range(ord(char), ord(high) + 1))
            else:
                chars.add(char)

    def group(self, end: int, depth: int) -> int:
        after = self.nfa.state()
        while True:
            self.after_slash = False  # the parser emits `(` or `|` here
            start, alt_end = self.sequence(depth + 1)
            self.nfa.eps[end].append(start)
            self.nfa.eps[alt_end].append(after)
            if self.pos >= len(self.text):
                raise GlobError(f"{self.text!r}: unclosed '{{'")
            self.pos += 1
            if self.text[self.pos - 1] == "}":
                break
        self.after_slash = False
        if depth == 0:
            self.top.append(None)
        return after

    def variable(self, end: int, name: str, depth: int) -> int:
        if name in DIGIT_VARIABLES:
            end = self.link(end, DIGITS, None, depth)
            return self.loop(end, DIGITS, depth)
        if "@{" + name + "}" == DISK_DEVICES:
            for char in "/dev/":
                end = self.link(end, CharSet(frozenset(char)), None, depth)
            segment_start = end
            end = self.link(end, CharSet(_DEVICE_FIRST), None, depth)
            end = self.loop(end, CharSet(_DEVICE_REST), depth)
            self.nfa.edges[end].append((CharSet(frozenset("/")), segment_start))  # more segments
            after = self.nfa.state()
            self.nfa.eps[end].append(after)
            return after
        return self.loop(end, ANY, depth)


def _filter_slashes(pattern: str) -> str:
    """The parser collapses repeated slashes before matching; so does the kernel's path."""
    return re.sub("/{2,}", "/", pattern) if "//" in pattern else pattern


@lru_cache(maxsize=1 << 16)
def _raw_ends(pattern: str) -> tuple[str, str, bool]:
    """Literal text the pattern starts and ends with, read off the text without compiling
    it (any character that might be special ends it), and whether it is all literal."""
    first = _GLOB_CHAR.search(pattern)
    if first is None:
        return pattern, pattern, True
    last = _GLOB_CHAR.search(pattern[::-1])
    return pattern[: first.start()], pattern[len(pattern) - last.start() if last else 0 :], False


def _literal_ends(top: Sequence[str | None]) -> tuple[str, str, bool]:
    """The literal characters before the first and after the last top-level glob element."""
    if None not in top:
        text = "".join(c for c in top if c is not None)
        return text, text, True
    first, last = top.index(None), len(top) - 1 - top[::-1].index(None)
    return "".join(c for c in top[:first] if c), "".join(c for c in top[last + 1 :] if c), False


@lru_cache(maxsize=8192)
def compile_glob(pattern: str) -> Glob:
    """The automaton for `pattern`; GlobError for text AppArmor would refuse."""
    pattern = _filter_slashes(pattern)
    parser = _Parser(pattern)
    positive = parser.parse()
    prefix, suffix, literal = _literal_ends(parser.top)
    negative = None
    if pattern == DISK_DEVICES:
        prefix, negative = "/dev/", compile_glob(NOT_DISKS).positive
    return Glob(positive, negative, prefix, suffix, literal)


def escape(path: str) -> str:
    """`path` as a pattern that matches exactly it."""
    return _GLOB_CHAR.sub(lambda m: "\\" + m[0], path)


def _accepts(nfa: Nfa, path: str) -> bool:
    states = nfa.closure([nfa.start])
    for char in path:
        states = nfa.step(states, char)
        if not states:
            return False
    return nfa.accept in states


def matches(path: str, pattern: str) -> bool:
    """Whether the concrete `path` is one of the paths `pattern` names."""
    glob = compile_glob(pattern)
    path = _filter_slashes(path)
    if glob.literal:
        return path == glob.prefix
    if not (path.startswith(glob.prefix) and path.endswith(glob.suffix)):
        return False
    return _accepts(glob.positive, path) and not (glob.negative and _accepts(glob.negative, path))


def _ends_meet(a: tuple[str, str, bool], b: tuple[str, str, bool]) -> bool:
    """Whether one path can start with both literal prefixes and end with both suffixes."""
    (prefix_a, suffix_a, _), (prefix_b, suffix_b, _) = a, b
    starts = prefix_a.startswith(prefix_b) or prefix_b.startswith(prefix_a)
    return starts and (suffix_a.endswith(suffix_b) or suffix_b.endswith(suffix_a))


@lru_cache(maxsize=1 << 16)
def _last_segment(pattern: str) -> str | None:
    """The text after the last `/` when nothing in it can match a `/` (so every path the
    pattern names ends in a segment it matches), else None."""
    tail = pattern[pattern.rfind("/") + 1 :]
    return tail if _SEGMENT.fullmatch(tail) and "**" not in tail else None


def witness(a: str, b: str) -> str | None:
    """A path both patterns name, or None when they name no path in common. Literal
    ends are compared first, so most pairs are settled without compiling either
    pattern (GlobError only for a malformed pattern that could meet the other)."""
    a, b = _filter_slashes(a), _filter_slashes(b)
    raw_a, raw_b = _raw_ends(a), _raw_ends(b)
    if not _ends_meet(raw_a, raw_b):
        return None
    if raw_a[2] or raw_b[2]:
        path, other = (a, b) if raw_a[2] else (b, a)
        return path if matches(path, other) else None
    tail_a, tail_b = _last_segment(a), _last_segment(b)
    if tail_a is not None and tail_b is not None and not _ends_meet(_raw_ends(tail_a), _raw_ends(tail_b)):
        return None
    ga, gb = compile_glob(a), compile_glob(b)
    if not _ends_meet((ga.prefix, ga.suffix, ga.literal), (gb.prefix, gb.suffix, gb.literal)):
        return None
    if ga.literal or gb.literal:
        path, other = (ga.prefix, b) if ga.literal else (gb.prefix, a)
        return path if matches(path, other) else None
    parts = [(ga.positive, True), (gb.positive, True)]
    parts += [(g.negative, False) for g in (ga, gb) if g.negative is not None]
    return _search(parts)


def intersects(a: str, b: str) -> bool:
    """Whether some path is named by both patterns (symmetric)."""
    return witness(a, b) is not None


_Product = tuple[frozenset[int], ...]  # a state set of each automaton searched together
_Parents = dict[_Product, tuple[_Product, str] | None]


def _search(parts: Sequence[tuple[Nfa, bool]]) -> str | None:
    """Breadth-first over the product of the subset constructions: the shortest path each
    `True` part accepts and no `False` part does. Each step tries every character some
    edge names, plus one stand-in for all the others (they behave alike)."""
    start = tuple(nfa.closure([nfa.start]) for nfa, _ in parts)
    parent: _Parents = {start: None}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        if all((nfa.accept in states) == wanted for (nfa, wanted), states in zip(parts, current, strict=True)):
            return _spell(parent, current)
        named: set[str] = set()
        for (nfa, _), states in zip(parts, current, strict=True):
            named |= nfa.mentioned(states)
        other = _stand_in(named)
        for char in [*sorted(named - {"\0"}), None]:
            nxt = tuple(nfa.step(states, char) for (nfa, _), states in zip(parts, current, strict=True))
            if any(wanted and not states for (_, wanted), states in zip(parts, nxt, strict=True)):
                continue
            if nxt not in parent:
                parent[nxt] = (current, other if char is None else char)
                queue.append(nxt)
    return None


def _stand_in(named: set[str]) -> str:
    """A character no edge names (any such behaves as every other such)."""
    candidates = itertools.chain(_WITNESS_CHARS, map(chr, itertools.count(0xC0)))
    return next(c for c in candidates if c not in named and c != "/")


def _spell(parent: _Parents, state: _Product) -> str:
    chars: list[str] = []
    link = parent[state]
    while link is not None:
        state, char = link
        chars.append(char)
        link = parent[state]
    return "".join(reversed(chars))
