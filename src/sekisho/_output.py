"""Text transformations of the request and the answer: rewriting what goes upstream (redact,
pseudonymise), and inspecting what comes back (re-identify, mask or cut), also across SSE
events with a bounded look-behind."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import orjson

from sekisho.api.schema import text_slots
from sekisho.classify import (
    Finding,
    Pseudonymiser,
    Scanner,
    StreamReidentifier,
    StreamScanner,
    redact,
)

if TYPE_CHECKING:
    from sekisho.pipeline import OutputRule as OutputRuleView
    from sekisho.pipeline import TenantView

log = logging.getLogger("sekisho.pipeline")


# A stream of output text within one choice: its content (CONTENT), its reasoning (what
# reasoning models served by vLLM, SGLang or DeepSeek's API send before the answer, under
# either name) or the arguments of its tool call number k (k >= 0), fed piece by piece as the
# deltas arrive. Reasoning is text the client receives: it gets what content gets.
CONTENT = -1
TEXT_FIELDS = {-3: "reasoning", -2: "reasoning_content", CONTENT: "content"}
StreamKey = tuple[int, int]  # (choice index, a TEXT_FIELDS slot or a tool call index)


class StreamOutput:
    """Output inspection for a stream: re-identify pseudonyms (also when a placeholder is split
    across events) and apply the tenant's output rule, per choice and per tool call's
    arguments, with a bounded look-behind."""

    def __init__(self, pseudo: Pseudonymiser | None, tenant: TenantView, scanner: Scanner) -> None:
        self._pseudo = pseudo
        self._rule = tenant.detection.output
        self._scanner = scanner
        self._reident: dict[StreamKey, StreamReidentifier] = {}
        self._scan: dict[StreamKey, StreamScanner] = {}
        self._texts: dict[StreamKey, list[str]] = {}
        self._last: dict[str, Any] | None = None
        self._finished: set[StreamKey] = set()  # flushed with their choice's finish reason
        self.error_code: str | None = None
        self._active = pseudo is not None or self._rule.action != "none"
        if self._rule.action != "none":
            self._types = frozenset(self._rule.types)
            self._typed = TypedScanner(scanner, self._types)

    def _pipe(self, key: StreamKey, text: str, final: bool = False) -> str:
        if key in self._finished:
            if final and not text:
                return ""  # flushed when its choice finished; nothing is held any more
            # More of a choice after its finish reason (some servers send an empty delta):
            # inspected afresh.
            self._finished.discard(key)
            self._reident.pop(key, None)
            self._scan.pop(key, None)
        if self._pseudo is not None:
            r = self._reident.get(key)
            if r is None:
                escape = None if key[1] < 0 else json_string_escape  # arguments are JSON
                r = self._reident[key] = StreamReidentifier(self._pseudo, escape)
            text = r.feed(text) + (r.finish() if final else "")
        if self._rule.action != "none":
            sc = self._scan.get(key)
            if sc is None:
                mode: Literal["mask", "cut"] = "cut" if self._rule.action == "cut" else "mask"
                sc = self._scan[key] = StreamScanner(self._typed, mode)  # type: ignore[arg-type]
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
                found = "output_cut" if sc.cut else "output_masked"
                self.error_code = _worse(self.error_code, found)
        return text

    def _take(self, key: StreamKey, original: str) -> str:
        text = self._pipe(key, original) if self._active else original
        self._texts.setdefault(key, []).append(text)
        return text

    def apply(self, event: dict[str, Any]) -> bool:
        changed = False
        for choice in event.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            idx = choice.get("index", 0)
            for slot, name in TEXT_FIELDS.items():
                original = delta.get(name)
                if not isinstance(original, str):
                    continue
                text = self._take((idx, slot), original)
                if text != original:
                    delta[name] = text
                    changed = True
                self._last = event
            for n, call in enumerate(delta.get("tool_calls") or ()):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
                    continue
                k = call.get("index", n)
                original = fn["arguments"]
                text = self._take((idx, k if isinstance(k, int) else n), original)
                if text != original:
                    fn["arguments"] = text
                    changed = True
                self._last = event
            if choice.get("finish_reason") is not None and self._active:
                changed = self._flush(idx, delta) or changed
        return changed

    def _flush(self, idx: int, delta: dict[str, Any]) -> bool:
        """A choice is finishing: what was held back of it goes out in this event, before the
        finish reason (and before a usage event after it), as the client expects."""
        added = False
        for key in sorted(k for k in self._texts if k[0] == idx):
            rest = self._pipe(key, "", final=True)
            self._finished.add(key)
            if not rest:
                continue
            self._texts[key].append(rest)
            added = True
            slot = key[1]
            if slot < 0:
                name = TEXT_FIELDS[slot]
                delta[name] = (delta.get(name) or "") + rest
                continue
            calls = delta.setdefault("tool_calls", [])
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if call.get("index") == slot and isinstance(fn, dict):
                    fn["arguments"] = (fn.get("arguments") or "") + rest
                    break
            else:
                calls.append({"index": slot, "function": {"arguments": rest}})
        return added

    def finish(self) -> dict[str, Any] | None:
        """A final event with whatever was held back, if anything was."""
        if not self._active or self._last is None:
            return None
        deltas: dict[int, dict[str, Any]] = {}
        for key in sorted(self._texts):
            rest = self._pipe(key, "", final=True)
            if not rest:
                continue
            self._texts[key].append(rest)
            idx, slot = key
            delta = deltas.setdefault(idx, {})
            if slot < 0:
                delta[TEXT_FIELDS[slot]] = rest
            else:
                delta.setdefault("tool_calls", []).append(
                    {"index": slot, "function": {"arguments": rest}}
                )
        if not deltas:
            return None
        choices = [
            {"index": idx, "delta": delta, "finish_reason": None}
            for idx, delta in sorted(deltas.items())
        ]
        base = {k: v for k, v in self._last.items() if k not in ("choices", "usage")}
        return {**base, "choices": choices}

    def texts(self) -> list[str]:
        """Each choice's content, then each of its tool calls' arguments, as delivered."""
        return ["".join(parts) for _, parts in sorted(self._texts.items())]


def inspect_answer(
    data: dict[str, Any],
    pseudo: Pseudonymiser | None,
    rule: OutputRuleView,
    scanner: Scanner,
    request_id: str,
) -> tuple[str | None, list[str]]:
    """A complete chat answer, in place: re-identify pseudonyms, then apply the output rule
    (mask or cut), in every choice's content and in the arguments of every tool call it makes.
    Returns the error code to record (None, output_masked, output_cut or
    output_inspection_failed) and the texts as delivered."""
    error: str | None = None
    delivered: list[str] = []
    types = frozenset(rule.types)
    for choice in data.get("choices") or ():
        msg = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(msg, dict):
            continue
        slots: list[tuple[dict[str, Any], str]] = []
        for name in TEXT_FIELDS.values():  # reasoning first, as the model wrote it
            if isinstance(msg.get(name), str):
                slots.append((msg, name))
        calls = [c for c in msg.get("tool_calls") or () if isinstance(c, dict)]
        fc = msg.get("function_call")
        for fn in [c.get("function") for c in calls] + [fc]:
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                slots.append((fn, "arguments"))
        for holder, key in slots:
            text = holder[key]
            if pseudo is not None:  # arguments are JSON: a restored value is escaped for it
                text = pseudo.reidentify(text, json_string_escape if key == "arguments" else None)
            if rule.action != "none":
                try:
                    hits = [f for f in scanner.scan(text) if f.type in types]
                except Exception:
                    # Fail closed: an answer that cannot be inspected is not delivered.
                    log.exception(
                        "output inspection failed; answer withheld",
                        extra={"request_id": request_id},
                    )
                    _withhold(choice, msg)
                    error = "output_inspection_failed"
                    break
                if hits and rule.action == "mask":
                    text = redact(text, hits)
                    error = _worse(error, "output_masked")
                elif hits and key == "content":
                    text = text[: hits[0].start]
                    choice["finish_reason"] = "content_filter"
                    error = _worse(error, "output_cut")
                elif hits and key != "arguments":
                    # Reasoning is cut where the identifier starts, and the answer that
                    # followed it goes with it: what came after the cut is not delivered.
                    holder[key] = text[: hits[0].start]
                    delivered.append(holder[key])
                    if isinstance(msg.get("content"), str):
                        msg["content"] = ""
                    msg.pop("tool_calls", None)
                    msg.pop("function_call", None)
                    choice["finish_reason"] = "content_filter"
                    error = _worse(error, "output_cut")
                    break
                elif hits:
                    # A tool call cut short is not a smaller tool call but a broken one: the
                    # answer keeps its text and makes no call at all.
                    msg.pop("tool_calls", None)
                    msg.pop("function_call", None)
                    choice["finish_reason"] = "content_filter"
                    error = _worse(error, "output_cut")
                    break  # the other slots left are arguments of the calls just dropped
            holder[key] = text
            delivered.append(text)
    return error, delivered


def json_string_escape(value: str) -> str:
    """``value`` as it must appear inside a JSON string (quotes, backslashes, controls)."""
    return orjson.dumps(value).decode()[1:-1]


_SEVERITY = {None: 0, "output_masked": 1, "output_cut": 2, "output_inspection_failed": 3}


def _worse(current: str | None, new: str) -> str:
    """The error code to record when an answer has several: the most severe one."""
    if current is not None and _SEVERITY[current] >= _SEVERITY[new]:
        return current
    return new


def _withhold(choice: dict[str, Any], msg: dict[str, Any]) -> None:
    msg["content"] = ""
    msg.pop("tool_calls", None)
    msg.pop("function_call", None)
    choice["finish_reason"] = "content_filter"


class TypedScanner:
    """A scanner view that reports only some finding types (the output rule's)."""

    def __init__(self, scanner: Scanner, types: frozenset[str]) -> None:
        self._scanner = scanner
        self._types = types

    def scan(self, text: str) -> list[Finding]:
        return [f for f in self._scanner.scan(text) if f.type in self._types]


def pseudonymise_obj(obj: Any, find: Callable[[str], list[Finding]], p: Pseudonymiser) -> Any:
    """A copy of ``obj`` with the findings in every string pseudonymised. Iterative: a client's
    unknown field may nest as deep as JSON allows, past Python's recursion limit."""

    def leaf(value: Any) -> Any:
        if isinstance(value, str):
            fs = find(value)
            return p.pseudonymise(value, fs) if fs else value
        return value

    if not isinstance(obj, list | dict):
        return leaf(obj)

    def items(node: Any) -> Any:
        return iter(enumerate(node)) if isinstance(node, list) else iter(node.items())

    top: Any = [] if isinstance(obj, list) else {}
    # Depth first in document order, as a recursive walk would go (placeholders are numbered
    # in the order values are met): an explicit stack of the containers being copied.
    stack: list[tuple[Any, Any]] = [(items(obj), top)]
    while stack:
        pending, dst = stack[-1]
        for key, value in pending:
            if isinstance(value, list | dict):
                child: Any = [] if isinstance(value, list) else {}
            else:
                child = leaf(value)
            if isinstance(dst, list):
                dst.append(child)
            else:
                dst[key] = child
            if isinstance(value, list | dict):
                stack.append((items(value), child))
                break
        else:
            stack.pop()
    return top


def rewrite_texts(kind: str, body: dict[str, Any], rewrite: Callable[[str], str]) -> dict[str, Any]:
    """The request body with every text the upstream would see passed through ``rewrite``:
    exactly the texts the classifier scanned (``api.schema.text_slots``). The body is the
    call's own parse of the request, so it is rewritten in place."""
    for container, key in text_slots(kind, body):
        text = rewrite(container[key])
        if key == "name":
            # A participant name: OpenAI refuses '<', '>' there ('^[^\\s<|\\/>]+$'), so a
            # placeholder goes in full-width brackets, which re-identification also accepts.
            text = text.translate(_NAME_SAFE)
        container[key] = text
    return body


_NAME_SAFE = str.maketrans({"<": "＜", ">": "＞"})
