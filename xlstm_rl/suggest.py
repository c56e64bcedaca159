""""Did you mean ...?" hints for unknown names: config keys and sections, packaged configs,
environment ids, cores, algorithms and TensorBoard tags all use these two functions."""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable


def close_matches(word: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.6,
                  normalize: Callable[[str], str] | None = None) -> list[str]:
    """Up to ``n`` candidates close to ``word``, best first (case-insensitive).

    Args:
        word: The unknown name.
        candidates: Valid names.
        n: Most suggestions.
        cutoff: Similarity threshold in [0, 1] (``difflib`` ratio).
        normalize: Compare ``normalize(word)`` with ``normalize(candidate)`` instead (e.g. the
            last segment of a dotted key, or an env id without namespace and version); every
            candidate with a matching form is suggested.
    """
    form = normalize or (lambda s: s)
    by_form: dict[str, list[str]] = {}
    for candidate in candidates:
        by_form.setdefault(form(candidate).lower(), []).append(candidate)
    found: list[str] = []
    for match in difflib.get_close_matches(form(word).lower(), list(by_form), n=n,
                                           cutoff=cutoff):
        found.extend(sorted(by_form[match], reverse=normalize is not None))
    return list(dict.fromkeys(found))[:n]


def did_you_mean(word: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.6,
                 normalize: Callable[[str], str] | None = None) -> str:
    """``"; did you mean 'a', 'b'?"`` for :func:`close_matches`, or ``""`` when none is close."""
    return format_suggestions(close_matches(word, candidates, n, cutoff, normalize))


def format_suggestions(names: list[str]) -> str:
    """``"; did you mean 'a', 'b'?"``, or ``""`` for no names."""
    return f"; did you mean {', '.join(repr(c) for c in names)}?" if names else ""
