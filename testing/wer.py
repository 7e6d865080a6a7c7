"""Word error rate with a small normaliser, for tests and benchmarks of the transcriber.

The normaliser forgives only what a reader would: case, punctuation, and numbers written as
words or digits ("ten thousand" == "10,000" == "10000"). Anything else counts as an error.
"""

from __future__ import annotations

import re

_UNITS = {
    word: value
    for value, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ]
    )
}
_TENS = {
    word: 10 * n
    for n, word in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], 2)
}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}


def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation, with every run of number words as one number."""
    text = re.sub(r"(?<=\d)[,.](?=\d{3}\b)", "", text.lower())  # 10,000 → 10000
    text = re.sub(r"[-‐–—]", " ", text)  # twenty-one → twenty one
    words = re.sub(r"[^\w\s']", " ", text).replace("'", "").split()
    return _numbers_as_digits(words)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference word count), after normalising."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    return _edit_distance(ref, hyp), len(ref)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference length (0 for two empty texts)."""
    errors, length = word_errors(reference, hypothesis)
    return errors / length if length else float(errors > 0)


def corpus_word_error_rate(pairs: list[tuple[str, str]]) -> float:
    """All errors over all reference words: long clips weigh more, as in the literature."""
    counts = [word_errors(reference, hypothesis) for reference, hypothesis in pairs]
    total = sum(length for _, length in counts)
    return sum(errors for errors, _ in counts) / total if total else 0.0


def _numbers_as_digits(words: list[str]) -> list[str]:
    out: list[str] = []
    run: list[str] = []
    for word in [*words, ""]:  # the empty sentinel flushes a trailing run
        if run and _continues_number(run[-1], word):
            run.append(word)
            continue
        if run:
            out.append(str(_words_to_int(run)))
            run = []
        if word in _UNITS or word in _TENS:
            run.append(word)
        elif word:
            out.append(word)
    return out


def _continues_number(previous: str, word: str) -> bool:
    """ "twenty one", "ten thousand", "hundred and"-less English; "one two" is two numbers."""
    if word in _SCALES:
        return True
    if previous in _TENS:
        return word in _UNITS and 0 < _UNITS[word] < 10
    return previous in _SCALES and (word in _UNITS or word in _TENS)


def _words_to_int(words: list[str]) -> int:
    total, current = 0, 0
    for word in words:
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        else:  # thousand, million, billion close a group
            total += max(current, 1) * _SCALES[word]
            current = 0
    return total + current


def _edit_distance(ref: list[str], hyp: list[str]) -> int:
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        current = [i]
        for j, hyp_word in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]
