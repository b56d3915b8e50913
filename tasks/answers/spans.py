"""Answer spans: where a response states its final answer, shared by all formats.

Extraction precedence (``answer_spans``), the first span a format can read wins:

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces, nesting allowed);
2. the last GSM8K ``#### x`` line;
3. the last answer marker: ``final answer is``/``Final Answer:``/``**Final Answer**:``,
   ``the answer is``, ``Answer:`` (up to three markers are tried, latest first); the span is
   the rest of that line, or the next non-empty line after a bare ``**Final Answer**`` heading;
4. the last non-empty line when it reads ``... = x``: the text after its last ``=``;
5. the format's own fallback (see each format), which is not part of ``answer_spans``.

Also the span-cleaning helpers several formats share (``\\text{}`` unwrapping, first sentence).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

# Answers sit at the end of a response; scanning only its tail bounds every regex and loop on
# arbitrarily long (or hostile) outputs.
MAX_SCAN_CHARS: Final = 20_000
# Longest answer span kept: final answers are short, reasoning that leaks into a span is noise.
MAX_ANSWER_CHARS: Final = 1_000

_BOX_COMMANDS: Final = ("\\boxed", "\\fbox")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
# "final answer" may stand alone as a heading ("**Final Answer**" then the answer on the next
# line); a bare "answer" needs "is", ":" or "=" so that "to answer this, ..." is no marker.
_MARKER = re.compile(
    r"(?:\bfinal[ \t]+answer\b(?:[ \t]*\*\*)?[ \t]*(?:\bis\b|[:=：]|(?=\n|$))"
    r"|\banswer\b(?:[ \t]*\*\*)?[ \t]*(?:\bis\b|[:=：]))"
    r"[ \t]*[:：]?[ \t]*(?:\*\*)?[ \t]*(?:[:：][ \t]*)?",
    re.IGNORECASE,
)
_MAX_MARKERS_TRIED: Final = 3
_MAX_BOXES_TRIED: Final = 3
# A line made only of delimiters/markup ("\]", "$$", "```") is not a last line of content.
_DELIMITER_LINE = re.compile(r"[\s$`*_\\\[\]()]*")


def _tail(text: str) -> str:
    """The part of ``text`` that is scanned for an answer: its last ``MAX_SCAN_CHARS`` chars."""
    return text[-MAX_SCAN_CHARS:]


def _clip(span: str) -> str:
    """``span`` stripped and cut to ``MAX_ANSWER_CHARS``."""
    return span.strip()[:MAX_ANSWER_CHARS].strip()


def _balanced_group(text: str, open_at: int) -> str | None:
    """The contents of the ``{...}`` group opening at ``text[open_at]``, or None if unclosed.

    Scans at most ``MAX_ANSWER_CHARS`` characters, so hostile nesting costs bounded time.
    """
    depth = 0
    end = min(len(text), open_at + MAX_ANSWER_CHARS + 2)
    for i in range(open_at, end):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    return None


def _box_starts(text: str) -> Iterator[int]:
    """End offsets of ``\\boxed``/``\\fbox`` commands in ``text``, last first (at most a few)."""
    ends = []
    for command in _BOX_COMMANDS:
        pos = len(text)
        for _ in range(_MAX_BOXES_TRIED):
            pos = text.rfind(command, 0, pos)
            if pos < 0:
                break
            after = pos + len(command)
            # "\boxedx" is another command, not a box.
            if after >= len(text) or not text[after].isalpha():
                ends.append(after)
    yield from sorted(ends, reverse=True)[:_MAX_BOXES_TRIED]


def last_boxed(text: str) -> str | None:
    """The contents of the last complete ``\\boxed{...}`` (or ``\\fbox``) in ``text``, or None.

    Nested braces are balanced (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); a box cut off
    by truncation is skipped for the one before it; ``\\boxed 5`` gives ``5``.
    """
    for after in _box_starts(text):
        rest = text[after : after + MAX_ANSWER_CHARS + 2]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            group = _balanced_group(rest, len(rest) - len(stripped))
            if group is not None and group.strip():
                return _clip(group)
        elif stripped and not stripped.startswith("}"):
            token = stripped.split(maxsplit=1)[0].rstrip("$.,;")
            if token:
                return _clip(token)
    return None


def _last_hashes(text: str) -> str | None:
    """The text after the last GSM8K ``####`` marker, or None."""
    pos = text.rfind("####")
    if pos < 0:
        return None
    match = _HASHES.match(text, pos)
    span = _clip(match.group(1)) if match else ""
    return span or None


def _marker_spans(text: str) -> Iterator[str]:
    """Spans after answer markers ("The answer is", "Answer:", ...), the last marker first."""
    starts = [m.end() for m in _MARKER.finditer(text)][-_MAX_MARKERS_TRIED:]
    for start in reversed(starts):
        end = text.find("\n", start)
        line = text[start : end if end >= 0 else len(text)]
        span = _clip(line.strip(" \t*:"))
        if not span and end >= 0:
            # A "**Final Answer**" heading: the answer is on the next non-empty line.
            span = _clip(_first_nonempty_line(text[end + 1 : end + 1 + MAX_ANSWER_CHARS * 2]))
        if span:
            yield span


def _first_nonempty_line(text: str) -> str:
    """The first line of ``text`` with content other than delimiters, or ''."""
    for line in text.splitlines():
        if not _DELIMITER_LINE.fullmatch(line):
            return line
    return ""


def _last_content_line(text: str) -> str:
    """The last line of ``text`` with content other than delimiters, or ''."""
    for line in reversed(text[-MAX_ANSWER_CHARS * 4 :].splitlines()):
        if not _DELIMITER_LINE.fullmatch(line):
            return line
    return ""


def _last_line_equals(text: str) -> str | None:
    """The text after the last ``=`` of the response's last content line, or None."""
    line = _last_content_line(text)
    if "=" not in line:
        return None
    span = _clip(line.rsplit("=", 1)[1].strip(" \t$*"))
    return span or None


def answer_spans(text: str) -> Iterator[str]:
    """Candidate final-answer spans of a response, in the module's precedence order.

    Formats take the first span they can read (see the module docstring); the format-specific
    fallback is not part of this sequence. Lazy, so a format stops scanning at its first hit.
    """
    tail = _tail(text)
    boxed = last_boxed(tail)
    if boxed is not None:
        yield boxed
    hashes = _last_hashes(tail)
    if hashes is not None:
        yield hashes
    yield from _marker_spans(tail)
    equals = _last_line_equals(tail)
    if equals is not None:
        yield equals


_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|emph|mbox)\s*\{([^{}]*)\}")


def _strip_text_commands(span: str) -> str:
    """``span`` without ``\\text{...}``-style wrappers and ``$`` (``\\text{(C)}`` → ``(C)``)."""
    for _ in range(3):
        span = _TEXT_COMMAND.sub(r"\1", span)
    return span.replace("$", "")


# A sentence ends at . ! ? before whitespace, possibly behind closing markup ("Paris.** It");
# "\!" is LaTeX spacing, not an exclamation.
_SENTENCE_END = re.compile(r"(?<!\\)[.!?](?=[*_\"'”’)\]]*(?:\s|$))")


def _first_sentence(span: str) -> str:
    """``span`` up to its first sentence end ("Paris. It is ..." → "Paris")."""
    match = _SENTENCE_END.search(span)
    return span[: match.start()] if match else span
