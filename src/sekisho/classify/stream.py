"""Scanning a model's output while it streams, and re-identifying placeholders in it.

``StreamScanner`` holds back the last ``lookbehind`` characters of what it has seen, so an
identifier split across chunks is complete before any of it is emitted. In ``mask`` mode the
emitted text has every finding replaced by its type token; in ``cut`` mode emission stops for
good at the first finding (the policy then ends the stream). A PEM private-key block is held
whole however long it is (up to a bound), because no part of it may leave.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from sekisho.classify._secrets import PEM_BEGIN, PEM_END
from sekisho.classify.findings import SECRET, Finding
from sekisho.classify.redact import (
    JSON_PLACEHOLDER_MAX_LEN,
    PLACEHOLDER_MAX_LEN,
    Pseudonymiser,
    redact,
)
from sekisho.classify.scanner import Scanner

# Characters of already-emitted text kept as context for the next scan (labels like 電話: that
# precede a number), so chunked and whole-text scans agree.
_CONTEXT = 128
_MAX_PEM = 16384


class StreamScanner:
    """Incremental scanner for output streams: ``feed`` chunks, emit what it returns."""

    def __init__(
        self, scanner: Scanner, mode: Literal["mask", "cut"] = "mask", lookbehind: int = 256
    ) -> None:
        if mode not in ("mask", "cut"):
            raise ValueError(f"StreamScanner mode must be 'mask' or 'cut', got {mode!r}")
        if lookbehind < 64:
            raise ValueError("lookbehind must be at least 64 characters to hold an identifier")
        self._scanner = scanner
        self.mode = mode
        self.lookbehind = lookbehind
        self._buffer = ""  # text not yet emitted
        self._base = 0  # stream offset of _buffer[0]
        self._context = ""  # emitted text kept for context
        self._findings: list[Finding] = []
        self.cut = False
        self._finished = False

    @property
    def findings(self) -> list[Finding]:
        """Findings so far, with offsets into the whole stream."""
        return list(self._findings)

    def feed(self, chunk: str) -> str:
        """Add a chunk; return the text that is now safe to emit (may be empty)."""
        if self._finished:
            raise RuntimeError("StreamScanner.feed called after finish()")
        if self.cut:
            self._base += len(chunk)
            return ""
        self._buffer += chunk
        return self._advance(final=False)

    def finish(self) -> str:
        """End of stream: return the rest that is safe to emit."""
        if self._finished:
            return ""
        self._finished = True
        if self.cut:
            return ""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        window = self._context + self._buffer
        offset = len(self._context)  # window index of _buffer[0]
        found: list[Finding] = []
        for f in self._scanner.scan(window):
            if f.end <= offset:
                continue  # wholly in emitted context: reported when it was emitted
            if f.start < offset:  # began in emitted text (only with a too-short lookbehind)
                f = Finding(f.type, offset, f.end, f.score, f.subtype)
            found.append(f)
        pem = _open_pem(window, offset)
        if final:
            # A block that never got its END line is what a whole-text scan makes of it:
            # BEGIN through its key material (see _secrets.detect_private_keys).
            safe = len(window)
        else:
            safe = max(offset, len(window) - self.lookbehind)
            if pem is not None:
                if len(window) - pem <= _MAX_PEM:
                    safe = min(safe, pem)
                else:  # an endless "key": everything since BEGIN is the secret
                    found = [f for f in found if f.end <= pem]
                    found.append(Finding(SECRET, pem, len(window), 0.99, "private_key"))
                    safe = len(window)
            for f in sorted(found, key=lambda f: f.start, reverse=True):
                if f.start < safe < f.end:
                    safe = f.start  # never emit part of an identifier
            safe = max(safe, offset)
        if self.mode == "cut" and found:
            first = min(f.start for f in found)
            emitted = window[offset : max(offset, min(first, safe))]
            self._record(found)
            self.cut = True
            self._base += len(self._buffer)
            self._buffer = ""
            return emitted
        settled = [f for f in found if f.end <= safe]
        self._record(settled)
        shifted = [
            Finding(f.type, f.start - offset, f.end - offset, f.score, f.subtype) for f in settled
        ]
        out = redact(window[offset:safe], shifted)
        consumed = safe - offset
        self._context = (self._context + self._buffer[:consumed])[-_CONTEXT:]
        self._buffer = self._buffer[consumed:]
        self._base += consumed
        return out

    def _record(self, found: list[Finding]) -> None:
        shift = self._base - len(self._context)
        for f in sorted(found, key=lambda f: f.start):
            self._findings.append(
                Finding(f.type, f.start + shift, f.end + shift, f.score, f.subtype)
            )


def _open_pem(window: str, offset: int) -> int | None:
    """Start of a private-key block in the unemitted text that has not been closed yet."""
    start = window.rfind("-----BEGIN", max(0, offset - 64))
    if start < 0:
        return None
    opening = PEM_BEGIN.match(window, start)
    if opening is None or PEM_END.search(window, opening.end()):
        return None
    return max(start, offset)


class StreamReidentifier:
    """Restores placeholders in a streamed answer, even when a placeholder is split."""

    def __init__(
        self, pseudonymiser: Pseudonymiser, escape: Callable[[str], str] | None = None
    ) -> None:
        self._pseudonymiser = pseudonymiser
        self._escape = escape  # how a restored value is encoded (see Pseudonymiser.reidentify)
        self._held = ""

    def feed(self, chunk: str) -> str:
        text = self._held + chunk
        # Hold back from the last '<' that could still open a placeholder.
        cut = len(text)
        for opener in ("<", "＜"):
            i = text.rfind(opener, max(0, len(text) - PLACEHOLDER_MAX_LEN))
            if i >= 0 and ">" not in text[i:] and "＞" not in text[i:]:
                cut = min(cut, i)
        if self._escape is not None:  # JSON: also from a '\u003c' (or part of one)
            cut = min(cut, _escaped_opener(text))
        self._held = text[cut:]
        return self._pseudonymiser.reidentify(text[:cut], self._escape)

    def finish(self) -> str:
        rest, self._held = self._held, ""
        return self._pseudonymiser.reidentify(rest, self._escape)


_ESCAPED_OPENERS = ("\\u003c", "\\uff1c")
_ESCAPED_CLOSERS = (">", "＞", "\\u003e", "\\uff1e")


def _escaped_opener(text: str) -> int:
    """Where a placeholder whose opening bracket is a JSON escape may start in the tail of
    ``text`` (``len(text)`` if nowhere): a whole escape with no closing bracket after it, or
    the start of one at the very end (``\\u00``)."""
    start = max(0, len(text) - JSON_PLACEHOLDER_MAX_LEN)
    i = text.find("\\", start)
    while i >= 0:
        head = text[i : i + 6].lower()
        if len(head) < 6 and any(o.startswith(head) for o in _ESCAPED_OPENERS):
            return i
        if head in _ESCAPED_OPENERS:
            rest = text[i + 6 :].lower()
            if not any(c in rest for c in _ESCAPED_CLOSERS):
                return i
        i = text.find("\\", i + 1)
    return len(text)
