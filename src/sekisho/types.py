"""Types shared by several steps of the request's path.

Kept here (as Starlette keeps its protocol types in ``types.py``) so that the steps do not import
each other sideways.
"""

from __future__ import annotations

import enum
import unicodedata


class Level(enum.IntEnum):
    """Classification level of a request, lowest to highest.

    The Japanese government's information classes are accepted as aliases (see ``LEVEL_ALIASES``):
    機密性1 is public, 機密性2 is confidential and 機密性3 is restricted.
    """

    PUBLIC = 0
    INTERNAL = 1
    CONFIDENTIAL = 2
    RESTRICTED = 3

    @classmethod
    def parse(cls, text: str) -> Level:
        """Parse a level name or alias; raise ``ValueError`` naming the accepted spellings.

        Full-width characters are read as their ASCII forms (機密性２ is 機密性2): an input method
        writes either."""
        key = unicodedata.normalize("NFKC", text).strip().lower()
        if key in LEVEL_ALIASES:
            return LEVEL_ALIASES[key]
        accepted = ", ".join(sorted(LEVEL_ALIASES))
        raise ValueError(f"unknown classification level {text!r}; accepted: {accepted}")

    @property
    def label(self) -> str:
        return _LABELS[self._value_]

    @property
    def government_alias(self) -> str:
        """機密性1/2/3 (統一基準), or '' for internal, which the government's scheme lacks."""
        return _GOVERNMENT_ALIASES.get(self._value_, "")

    @property
    def described(self) -> str:
        """``restricted (機密性3)``: the level as refusals and explanations name it."""
        alias = self.government_alias
        return f"{self.label} ({alias})" if alias else self.label


_LABELS = {level.value: level.name.lower() for level in Level}
_GOVERNMENT_ALIASES = {0: "機密性1", 2: "機密性2", 3: "機密性3"}

LEVEL_ALIASES: dict[str, Level] = {
    "public": Level.PUBLIC,
    "internal": Level.INTERNAL,
    "confidential": Level.CONFIDENTIAL,
    "restricted": Level.RESTRICTED,
    "機密性1": Level.PUBLIC,
    "機密性2": Level.CONFIDENTIAL,
    "機密性3": Level.RESTRICTED,
}


class Action(enum.StrEnum):
    """What the policy decided to do with a request."""

    ALLOW = "allow"
    REDACT = "redact"
    PSEUDONYMISE = "pseudonymise"
    BLOCK = "block"


# Content the upstream would receive but sekisho cannot read: not findings of a detector (no
# span, no value), counted per request so that the policy classifies it like a finding. Fail
# closed: nothing can show that it holds no personal data, so unless the tenant's policy maps
# it to another level (public included), each makes a request at least confidential
# (policy/compiler.py).
UNINSPECTED_IMAGE = "UNINSPECTED_IMAGE"  # chat image_url parts (画像)
UNINSPECTED_AUDIO = "UNINSPECTED_AUDIO"  # chat input_audio parts (音声)
UNINSPECTED_FILE = "UNINSPECTED_FILE"  # chat file parts: PDFs and other documents (ファイル)
UNINSPECTED_TOKENS = "UNINSPECTED_TOKENS"  # embeddings input given as token ids
UNINSPECTED_CONTENT = "UNINSPECTED_CONTENT"  # any other kind of content part
UNINSPECTED_TYPES: tuple[str, ...] = (
    UNINSPECTED_IMAGE,
    UNINSPECTED_AUDIO,
    UNINSPECTED_FILE,
    UNINSPECTED_TOKENS,
    UNINSPECTED_CONTENT,
)
