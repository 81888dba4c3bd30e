"""What a detector reports: a typed span of the original text, with a score.

Spans are Python ``str`` offsets (code points), end-exclusive, into the text exactly as it was
received, never into a normalised copy: ``text[f.start:f.end]`` is the value that was found.
The type names below are stable and documented (docs/classification.md); the ledger and
policy packs refer to them by name.
"""

from __future__ import annotations

from dataclasses import dataclass

MY_NUMBER = "MY_NUMBER"
CORPORATE_NUMBER = "CORPORATE_NUMBER"
PHONE_JP = "PHONE_JP"
PHONE_INTL = "PHONE_INTL"
POSTAL_CODE_JP = "POSTAL_CODE_JP"
PASSPORT_JP = "PASSPORT_JP"
DRIVER_LICENSE_JP = "DRIVER_LICENSE_JP"
RESIDENCE_CARD_JP = "RESIDENCE_CARD_JP"
HEALTH_INSURANCE_JP = "HEALTH_INSURANCE_JP"
BANK_ACCOUNT_JP = "BANK_ACCOUNT_JP"
ADDRESS_JP = "ADDRESS_JP"
DATE_OF_BIRTH = "DATE_OF_BIRTH"
EMAIL = "EMAIL"
CREDIT_CARD = "CREDIT_CARD"
IP_ADDRESS = "IP_ADDRESS"
IBAN = "IBAN"
PERSON = "PERSON"
SECRET = "SECRET"
CONFIDENTIAL_LABEL = "CONFIDENTIAL_LABEL"
CUSTOM = "CUSTOM"

TYPES: tuple[str, ...] = (
    MY_NUMBER,
    CORPORATE_NUMBER,
    PHONE_JP,
    PHONE_INTL,
    POSTAL_CODE_JP,
    PASSPORT_JP,
    DRIVER_LICENSE_JP,
    RESIDENCE_CARD_JP,
    HEALTH_INSURANCE_JP,
    BANK_ACCOUNT_JP,
    ADDRESS_JP,
    DATE_OF_BIRTH,
    EMAIL,
    CREDIT_CARD,
    IP_ADDRESS,
    IBAN,
    PERSON,
    SECRET,
    CONFIDENTIAL_LABEL,
    CUSTOM,
)

# Identifiers with a fixed written form; their quality target is stricter than for names and
# addresses (issue 4: >= 0.95 precision and recall).
STRUCTURED_TYPES: frozenset[str] = frozenset(TYPES) - {PERSON, ADDRESS_JP, CUSTOM}

# When two findings overlap, the more specific type wins a score tie: a validated identifier
# says more than a name guess or a label.
SPECIFICITY: dict[str, int] = {
    SECRET: 100,
    MY_NUMBER: 95,
    CORPORATE_NUMBER: 95,
    CREDIT_CARD: 95,
    RESIDENCE_CARD_JP: 90,
    IBAN: 90,
    EMAIL: 90,
    PASSPORT_JP: 85,
    DRIVER_LICENSE_JP: 85,
    HEALTH_INSURANCE_JP: 80,
    BANK_ACCOUNT_JP: 80,
    DATE_OF_BIRTH: 75,
    PHONE_JP: 70,
    PHONE_INTL: 70,
    POSTAL_CODE_JP: 70,
    IP_ADDRESS: 65,
    CUSTOM: 60,
    CONFIDENTIAL_LABEL: 55,
    ADDRESS_JP: 50,
    PERSON: 40,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of personal or secret data: ``text[start:end]`` in the original text."""

    type: str
    start: int
    end: int
    score: float
    subtype: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"a finding needs 0 <= start < end, got {self.start}..{self.end}")
