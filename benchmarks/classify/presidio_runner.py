"""Times Microsoft Presidio's pattern recognisers on prompts given as JSON on stdin.

Runs inside a separate virtual environment that has presidio-analyzer (never in sekisho's
own): ``/tmp/presidio-venv/bin/python presidio_runner.py < prompts.json``. Prints JSON with
per-prompt timings and the number of findings. No NLP engine is loaded: the recognisers'
``analyze`` is called with ``nlp_artifacts=None``, which is how their regex and checksum
logic runs; that is Presidio's fastest configuration.
"""

from __future__ import annotations

import json
import logging
import sys
import time

logging.disable(logging.CRITICAL)  # tldextract complains when it cannot fetch suffix lists

from presidio_analyzer.predefined_recognizers import (  # noqa: E402
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
)

RECOGNISERS = [
    (EmailRecognizer(), ["EMAIL_ADDRESS"]),
    (CreditCardRecognizer(), ["CREDIT_CARD"]),
    (PhoneRecognizer(), ["PHONE_NUMBER"]),
    (IpRecognizer(), ["IP_ADDRESS"]),
    (IbanRecognizer(), ["IBAN_CODE"]),
]


def analyse(text: str) -> list[tuple[str, int, int]]:
    found = []
    for recogniser, entities in RECOGNISERS:
        for result in recogniser.analyze(text, entities, None):
            if result.score >= 0.5:
                found.append((result.entity_type, result.start, result.end))
    return found


def main() -> None:
    request = json.load(sys.stdin)
    for text in request["warmup"]:
        analyse(text)
    timings = []
    count = 0
    for text in request["prompts"]:
        started = time.perf_counter()
        count += len(analyse(text))
        timings.append(time.perf_counter() - started)
    labelled = [analyse(t) for t in request.get("labelled", [])]
    json.dump({"timings": timings, "findings": count, "labelled": labelled}, sys.stdout)


if __name__ == "__main__":
    main()
