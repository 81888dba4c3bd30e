"""Text transformations of the request and the answer: rewriting what goes upstream (redact,
pseudonymise), and inspecting what comes back (re-identify, mask or cut), also across SSE
events with a bounded look-behind."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from sekisho.api.schema import text_slots
from sekisho.classify import (
    Finding,
    Pseudonymiser,
    Scanner,
    StreamReidentifier,
    StreamScanner,
)

if TYPE_CHECKING:
    from sekisho.pipeline import TenantView

log = logging.getLogger("sekisho.pipeline")


class StreamOutput:
    """Output inspection for a stream: re-identify pseudonyms (also when a placeholder is split
    across events) and apply the tenant's output rule, per choice, with a bounded look-behind."""

    def __init__(self, pseudo: Pseudonymiser | None, tenant: TenantView, scanner: Scanner) -> None:
        self._pseudo = pseudo
        self._rule = tenant.detection.output
        self._scanner = scanner
        self._reident: dict[int, StreamReidentifier] = {}
        self._scan: dict[int, StreamScanner] = {}
        self._texts: dict[int, list[str]] = {}
        self._last: dict[str, Any] | None = None
        self.error_code: str | None = None
        self._active = pseudo is not None or self._rule.action != "none"
        if self._rule.action != "none":
            self._types = frozenset(self._rule.types)
            self._typed = TypedScanner(scanner, self._types)

    def _pipe(self, idx: int, text: str, final: bool = False) -> str:
        if self._pseudo is not None:
            r = self._reident.get(idx)
            if r is None:
                r = self._reident[idx] = StreamReidentifier(self._pseudo)
            text = r.feed(text) + (r.finish() if final else "")
        if self._rule.action != "none":
            sc = self._scan.get(idx)
            if sc is None:
                mode: Literal["mask", "cut"] = "cut" if self._rule.action == "cut" else "mask"
                sc = self._scan[idx] = StreamScanner(self._typed, mode)  # type: ignore[arg-type]
            if self.error_code == "output_inspection_failed":
                return ""
            try:
                text = sc.feed(text) + (sc.finish() if final else "")
            except Exception:
                # Fail closed: once the answer cannot be inspected, nothing more is sent.
                log.exception("output inspection failed; rest of the stream withheld")
                self.error_code = "output_inspection_failed"
                return ""
            if sc.findings:
                self.error_code = "output_cut" if sc.cut else "output_masked"
        return text

    def apply(self, event: dict[str, Any]) -> bool:
        changed = False
        for choice in event.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict) or not isinstance(delta.get("content"), str):
                continue
            idx = choice.get("index", 0)
            original = delta["content"]
            text = self._pipe(idx, original) if self._active else original
            self._texts.setdefault(idx, []).append(text)
            if text != original:
                delta["content"] = text
                changed = True
            self._last = event
        return changed

    def finish(self) -> dict[str, Any] | None:
        """A final event with whatever was held back, if anything was."""
        if not self._active or self._last is None:
            return None
        choices = []
        for idx in sorted(self._texts):
            rest = self._pipe(idx, "", final=True)
            if rest:
                self._texts[idx].append(rest)
                choices.append({"index": idx, "delta": {"content": rest}, "finish_reason": None})
        if not choices:
            return None
        base = {k: v for k, v in self._last.items() if k not in ("choices", "usage")}
        return {**base, "choices": choices}

    def texts(self) -> list[str]:
        return ["".join(parts) for _, parts in sorted(self._texts.items())]


class TypedScanner:
    """A scanner view that reports only some finding types (the output rule's)."""

    def __init__(self, scanner: Scanner, types: frozenset[str]) -> None:
        self._scanner = scanner
        self._types = types

    def scan(self, text: str) -> list[Finding]:
        return [f for f in self._scanner.scan(text) if f.type in self._types]


def pseudonymise_obj(obj: Any, find: Callable[[str], list[Finding]], p: Pseudonymiser) -> Any:
    if isinstance(obj, str):
        fs = find(obj)
        return p.pseudonymise(obj, fs) if fs else obj
    if isinstance(obj, list):
        return [pseudonymise_obj(x, find, p) for x in obj]
    if isinstance(obj, dict):
        return {k: pseudonymise_obj(v, find, p) for k, v in obj.items()}
    return obj


def rewrite_texts(kind: str, body: dict[str, Any], rewrite: Callable[[str], str]) -> dict[str, Any]:
    """The request body with every text the upstream would see passed through ``rewrite``:
    exactly the texts the classifier scanned (``api.schema.text_slots``). The body is the
    call's own parse of the request, so it is rewritten in place."""
    for container, key in text_slots(kind, body):
        container[key] = rewrite(container[key])
    return body
