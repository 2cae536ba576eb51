"""GSM8K answer extraction and matching, as lm-eval's `gsm8k` task does it.

`strict-match` takes the first `#### N`; `flexible-extract` takes the last number-like run.
Both sides are then normalised by the task's `regexes_to_ignore` and lower-cased before an
exact comparison.
"""

from __future__ import annotations

import re

STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE_PATTERNS = (",", r"\$", r"(?s).*#### ", r"\.$")
INVALID = "[invalid]"
EXTRACTIONS = ("strict", "flexible")


def extract(text: str, how: str = "strict") -> str:
    """The answer string in a generation (`[invalid]` when there is none)."""
    if how == "strict":
        return regex_extract(text, STRICT_PATTERN, 0)
    if how == "flexible":
        return regex_extract(text, FLEXIBLE_PATTERN, -1)
    raise ValueError(f"unknown answer extraction {how!r}; valid: {', '.join(EXTRACTIONS)}")


def normalize(text: str) -> str:
    for pattern in IGNORE_PATTERNS:
        text = re.sub(pattern, "", text)
    return text.lower()


def is_correct(generation: str, reference: str, how: str = "strict") -> bool:
    """lm-eval's exact match of the extracted answer against a reference (a bare number or a
    full worked answer ending `#### N`)."""
    return normalize(extract(generation, how)) == normalize(reference)


def regex_extract(
    text: str, pattern: str | re.Pattern, group_select: int = 0, fallback: str = INVALID
) -> str:
    """lm-eval's `regex` filter: the `group_select`-th match of `pattern` (its first non-empty
    group where it has groups), stripped; `fallback` where nothing matches."""
    matches = re.findall(pattern, text)
    if not matches:
        return fallback
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((group for group in match if group), fallback)
    return match.strip()


def exact_match(
    prediction: str, reference: str, ignore_case: bool = False, regexes_to_ignore: tuple[str, ...] = ()
) -> bool:
    """lm-eval's `exact_match` metric for one item: both sides without `regexes_to_ignore`,
    lower-cased where `ignore_case`, then compared."""
    for pattern in regexes_to_ignore:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    return prediction == reference
