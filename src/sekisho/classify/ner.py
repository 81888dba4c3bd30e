"""Optional named-entity detector backed by GiNZA (spaCy) when it is installed.

sekisho does not depend on it: the rule-based detectors are the default and are fast. A
tenant that wants more name and address recall can install ``ginza`` and ``ja_ginza`` and
ask for ``Scanner(ner=True)``. This module imports spaCy only when that detector is built.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from sekisho.classify.findings import ADDRESS_JP, PERSON, Finding

# GiNZA's label set (OntoNotes-like and Sekine's extended hierarchy) → our types.
_LABELS = {
    "Person": PERSON,
    "PERSON": PERSON,
    "Province": ADDRESS_JP,
    "City": ADDRESS_JP,
    "GPE": ADDRESS_JP,
    "Address_Other": ADDRESS_JP,
}
_SCORE = 0.7


def available() -> bool:
    """True when GiNZA and spaCy can be imported."""
    return (
        importlib.util.find_spec("spacy") is not None
        and importlib.util.find_spec("ginza") is not None
    )


class NerDetector:
    def __init__(self, wanted: frozenset[str], model: str = "ja_ginza") -> None:
        if not available():
            raise RuntimeError(
                "Scanner(ner=True) needs GiNZA: pip install ginza ja_ginza "
                "(or leave ner off; the rule-based detectors do not need it)"
            )
        import spacy  # type: ignore[import-not-found]  # lazy: spaCy is slow to import

        self._nlp: Any = spacy.load(model)
        self._wanted = wanted

    def detect(self, text: str, out: list[Finding]) -> None:
        for ent in self._nlp(text).ents:
            type_ = _LABELS.get(ent.label_)
            if type_ is not None and type_ in self._wanted and ent.end_char > ent.start_char:
                out.append(Finding(type_, ent.start_char, ent.end_char, _SCORE))
