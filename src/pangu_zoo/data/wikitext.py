"""WikiText cleaning: undo the dataset's tokenisation and split it into passages (mindformers rules).

The rules are those of mindformers' wikitext2_data_process.py, applied in the same order.
"""

from __future__ import annotations

import re

# (is_regex, old, new), applied in this order.
_RULES: tuple[tuple[bool, str, str], ...] = (
    (False, "s '", "s'"),
    (True, r"/' [0-9]/", r"/'[0-9]/"),  # as in the reference, though it only matches a literal slash
    (False, " @-@ ", "-"), (False, " @,@ ", ","), (False, " @.@ ", "."),  # number separators
    (False, " : ", ": "), (False, " ; ", "; "), (False, " . ", ". "), (False, " .", "."),
    (False, " ! ", "! "), (False, " ? ", "? "), (False, " , ", ", "),
    (True, r"\(\s*([^\)]*?)\s*\)", r"(\1)"),  # no spaces inside brackets and quotes
    (True, r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    (True, r"{\s*([^}]*?)\s*}", r"{\1}"),
    (True, r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    (True, r"'\s*([^']*?)\s*'", r"'\1'"),
    (False, "= = = =", "===="), (False, "= = =", "==="), (False, "= =", "=="),
    (False, " \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    (False, " \n", "\n"), (False, "\n ", "\n"),
    (False, " N ", " 1 "),
    (False, " 's", "'s"),
)


def clean_wikitext(text: str) -> str:
    """Detokenise one WikiText line (" @-@ " -> "-", " , " -> ", ", "( x )" -> "(x)", ...)."""
    for is_regex, old, new in _RULES:
        text = re.sub(old, new, text) if is_regex else text.replace(old, new)
    return text


def is_heading(line: str) -> bool:
    """A stripped WikiText line like '= Title =' or '= = Section = ='."""
    return line.startswith("=") and line.endswith("=")


def wikitext_passages(text: str) -> list[str]:
    """Passages of a WikiText file: the non-empty lines between headings, cleaned and joined by one space.

    Headings are dropped. Unlike the reference, the last passage of the file is kept (it never flushed it).
    """
    passages: list[str] = []
    current: list[str] = []
    for raw_line in text.split("\n"):
        line = raw_line.strip()
        if not line:
            continue
        if is_heading(line):
            if current:
                passages.append(" ".join(clean_wikitext(part) for part in current).strip())
                current = []
            continue
        current.append(line)
    if current:
        passages.append(" ".join(clean_wikitext(part) for part in current).strip())
    return [passage for passage in passages if passage]
