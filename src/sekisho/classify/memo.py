"""Findings of texts already scanned, so a conversation is not scanned again every turn.

A chat client sends the whole conversation with every request: the system prompt and every
earlier message again, then one new message. Scanning is a pure function of the text and the
tenant's scanner, so each text's findings are kept (offsets and types, never values) and the
next request scans only what is new: the scanning cost of a conversation grows with its length,
not with its length squared.

The memo is keyed by a keyed BLAKE2b digest of the text, with a key made at start-up and never
stored: the memo holds no prompt text, and its keys say nothing about a text without the key.
It is bounded (entries, findings held in all, and only texts up to ``max_chars`` with at most
``max_findings`` each: a few MB at most) and per scanner,
so a policy reload, which builds new scanners, starts afresh.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from hashlib import blake2b

from sekisho.classify.findings import Finding
from sekisho.classify.scanner import Scanner


class ScanMemo:
    def __init__(
        self,
        scanner: Scanner,
        *,
        entries: int = 4096,
        max_chars: int = 16384,
        max_findings: int = 256,
        max_held: int = 32768,
    ) -> None:
        self.scanner = scanner
        self.entries = entries
        self.max_chars = max_chars
        self.max_findings = max_findings
        self.max_held = max_held  # findings kept in all (each about 100 bytes): a few MB
        self._held = 0
        self.hits = 0
        self.misses = 0
        self._key = os.urandom(32)
        self._memo: OrderedDict[bytes, tuple[Finding, ...]] = OrderedDict()
        self._lock = threading.Lock()  # a document-sized request is inspected in a thread

    def scan(self, text: str) -> list[Finding]:
        """``scanner.scan(text)``, from the memo when this text was scanned before."""
        if len(text) > self.max_chars:
            return self.scanner.scan(text)
        digest = blake2b(text.encode(), digest_size=16, key=self._key).digest()
        with self._lock:
            found = self._memo.get(digest)
            if found is not None:
                self._memo.move_to_end(digest)
                self.hits += 1
                return list(found)
            self.misses += 1
        result = self.scanner.scan(text)
        if len(result) <= self.max_findings:
            with self._lock:
                if digest not in self._memo:
                    self._memo[digest] = tuple(result)
                    self._held += len(result)
                while len(self._memo) > self.entries or self._held > self.max_held:
                    _, dropped = self._memo.popitem(last=False)
                    self._held -= len(dropped)
        return result

    def __len__(self) -> int:
        return len(self._memo)
