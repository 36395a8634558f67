"""Rule-based English sentence splitting with character spans (no model, no download).

Pre-training tasks cut passages into sentences (ICT, BFS, WLP), and the ReQA builder decides relevance by
whether a sentence's character span contains an answer span, so the splitter returns spans into the original
text, never rewritten strings. A boundary is a ``.``, ``!`` or ``?`` (optionally followed by closing quotes or
brackets) followed by whitespace and an upper-case letter, a digit or an opening quote, unless the word before
the full stop is a common abbreviation or a single initial ("J. S. Bach", "U.S. Army").
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r"[.!?][\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st mt ft jr sr rev gen col lt sgt capt cmdr gov sen rep hon inc ltd co corp bros "
    "vs etc e.g i.e cf al approx ca c no nos vol fig op p pp jan feb mar apr jun jul aug sep sept oct nov dec "
    "u.s u.k u.n a.d b.c".split()
)


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the ``.`` at ``dot`` ends an abbreviation or an initial rather than a sentence."""
    if text[dot] != ".":
        return False
    start = dot
    while start > 0 and not text[start - 1].isspace() and text[start - 1] not in "(\"'“":
        start -= 1
    word = text[start:dot].lower()
    return len(word) == 1 and word.isalpha() or word in _ABBREVIATIONS


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the sentences of ``text``, whitespace trimmed, in order.

    >>> text = "Dr. Who met J. S. Bach in 1750. He said: \\"Hi!\\" Then left?  Yes."
    >>> [text[s:e] for s, e in sentence_spans(text)]
    ['Dr. Who met J. S. Bach in 1750.', 'He said: "Hi!"', 'Then left?', 'Yes.']
    >>> sentence_spans("   ")
    []
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if _is_abbreviation(text, match.start()):
            continue
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    trimmed = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            trimmed.append((s, e))
    return trimmed


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (see ``sentence_spans``)."""
    return [text[s:e] for s, e in sentence_spans(text)]
