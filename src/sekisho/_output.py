"""Text transformations of the request and the answer: rewriting what goes upstream (redact,
pseudonymise), and inspecting what comes back (re-identify, mask or cut), also across SSE
events with a bounded look-behind."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import orjson

from sekisho.api.schema import JSON_ESCAPE, text_slots, unescaped
from sekisho.call import estimate_tokens
from sekisho.classify import (
    Finding,
    Pseudonymiser,
    Scanner,
    StreamReidentifier,
    StreamScanner,
    redact,
)

if TYPE_CHECKING:
    from sekisho.call import OutputRule as OutputRuleView
    from sekisho.call import TenantView

log = logging.getLogger("sekisho.pipeline")


# A stream of output text within one choice: its content (CONTENT), its reasoning (what
# reasoning models served by vLLM, SGLang or DeepSeek's API send before the answer, under
# either name) or the arguments of its tool call number k (k >= 0), fed piece by piece as the
# deltas arrive. Reasoning is text the client receives: it gets what content gets.
CONTENT = -1
TEXT_FIELDS = {-3: "reasoning", -2: "reasoning_content", CONTENT: "content", -4: "refusal"}
StreamKey = tuple[int, int]  # (choice index, a TEXT_FIELDS slot or a tool call index)
# A custom tool call's free-text input (GPT-5's custom tools) is slot CUSTOM + its call index:
# plain text, where a function call's arguments are JSON.
CUSTOM = 100_000
# The arguments of a legacy function call (``delta.function_call``, before tool calls): JSON.
FUNCTION_CALL = 200_000
# The transcript of a spoken answer (``delta.audio.transcript``): prose.
TRANSCRIPT = 300_000
_LEGACY_FIELDS = {CONTENT: "text"}  # a legacy completion's choice: its text is its content
# A stream's delivered text is kept in pieces of this many events, joined: a long answer of
# small deltas costs its characters, not an object per delta (about twice as much).
_JOIN_EVERY = 512


class _Text:
    """One stream text as delivered so far, for its record (the ledger's output hash, the
    store): kept as pieces of ``_JOIN_EVERY`` deltas joined, so a stream of a million small
    events holds a few thousand strings, and every character is copied once more at most.
    It also counts the characters the endpoint sent of it (ASCII and other, as
    ``estimate_tokens`` counts them), delivered or not: what an estimate of its usage is of."""

    __slots__ = ("joined", "parts", "sent_ascii", "sent_other")

    def __init__(self) -> None:
        self.joined: list[str] = []
        self.parts: list[str] = []
        self.sent_ascii = 0
        self.sent_other = 0

    def sent(self, text: str) -> None:
        """``text`` came from the endpoint (whatever of it is delivered, and when)."""
        if text.isascii():  # constant time in CPython: the usual delta costs an addition
            self.sent_ascii += len(text)
            return
        ascii_chars = len(text.encode("ascii", "ignore"))
        self.sent_ascii += ascii_chars
        self.sent_other += len(text) - ascii_chars

    def append(self, text: str) -> None:
        parts = self.parts
        parts.append(text)
        if len(parts) >= _JOIN_EVERY:
            self.joined.append("".join(parts))
            parts.clear()

    def value(self) -> str:
        return "".join(self.joined + self.parts)


# Every string of a field of a chat message or delta that sekisho does not know (OpenRouter's
# ``reasoning_details``, LiteLLM's ``thinking_blocks``, a field newer than this gateway): slot
# OTHER + n, n numbering the strings' places as they are first met. Text the client receives:
# it gets what content gets.
OTHER = 400_000
# The fields of a chat message or delta read above: every other one is read by OTHER slots.
_KNOWN_IN_MESSAGE = frozenset(
    {*TEXT_FIELDS.values(), "role", "tool_calls", "function_call", "audio", "annotations"}
)
# In such a field, no text: a part's kind, ids, and what is opaque on purpose (a thinking
# block's signature, encrypted reasoning, which the client hands back unchanged).
_OPAQUE_IN_OTHER = frozenset({"type", "id", "signature", "data", "encrypted_content", "format"})
# The fields of a choice (chat, legacy completions) read above. Every other one (vLLM's
# stop_reason, the stop string matched or a token id; a provider's own field) is read whole in
# each answer or event, as citations are: metadata a choice carries whole, not text streamed in
# pieces.
_KNOWN_IN_CHOICE = frozenset({"index", "message", "delta", "logprobs", "finish_reason"})
_KNOWN_IN_LEGACY_CHOICE = frozenset({"index", "text", "logprobs", "finish_reason"})


class _HeldTokens:
    """A streamed choice's token logprobs not yet sent, and released text they have not yet
    spelled."""

    __slots__ = ("ended", "pending", "released")

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.released = ""
        self.ended = False  # the text was changed: no more logprobs for it

    def release(self, text: str) -> list[Any]:
        """The tokens that ``text``, released now after what was before, completes."""
        if self.ended:
            return []
        self.released += text
        out = []
        while self.pending:
            first = self.pending[0]
            token = first.get("token") if isinstance(first, dict) else None
            if isinstance(token, str) and self.released.startswith(token):
                self.released = self.released[len(token) :]
                out.append(self.pending.pop(0))
            elif isinstance(token, str) and token.startswith(self.released):
                break  # the rest of its text is still held back
            else:  # not the text as released (or no token at all): the rest is withheld
                self.ended = True
                self.pending.clear()
        return out


class StreamOutput:
    """Output inspection for a stream: re-identify pseudonyms (also when a placeholder is split
    across events) and apply the tenant's output rule, per choice and per tool call's
    arguments, with a bounded look-behind."""

    def __init__(
        self,
        pseudo: Pseudonymiser | None,
        tenant: TenantView,
        scanner: Scanner,
        *,
        legacy: bool = False,
        json_answer: bool = False,
    ) -> None:
        # legacy: a stream of the completions API, whose choices carry "text", not a delta
        self._legacy = legacy
        self._json_answer = json_answer  # the answer's text is JSON (answers_in_json)
        self._fields = _LEGACY_FIELDS if legacy else TEXT_FIELDS
        self._pseudo = pseudo
        self._rule = tenant.detection.output
        self._scanner = scanner
        self._reident: dict[StreamKey, StreamReidentifier] = {}
        self._unescape: dict[StreamKey, JsonUnescaper] = {}
        self._scan: dict[StreamKey, StreamScanner] = {}
        self._texts: dict[StreamKey, _Text] = {}
        # Characters of text delivered so far (the relay ends a stream past its limit).
        self.size = 0
        self._last: dict[str, Any] | None = None
        self._finished: set[StreamKey] = set()  # flushed with their choice's finish reason
        self._call_at: dict[int, int] = {}  # each choice's tool call being streamed
        # Token logprobs waiting for their text, per (choice, "content" or "refusal").
        self._logprobs: dict[tuple[Any, str], _HeldTokens] = {}
        # Values read whole (citations, hosted tools' items): what each string became, and
        # the strings delivered.
        self._seen: dict[str, tuple[str, bool]] = {}
        self._extras: list[str] = []
        self._delivered_extras: set[str] = set()
        # OTHER slots: the place of each string of an unknown field, and where it sits
        self._other_slots: dict[tuple[Any, ...], int] = {}
        self._other_places: dict[int, tuple[tuple[Any, ...], dict[str, Any] | None]] = {}
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
            self._unescape.pop(key, None)
        if self._rule.action != "none" and self._json_slot(key[1]):
            u = self._unescape.get(key)
            if u is None:
                u = self._unescape[key] = JsonUnescaper()
            text = u.feed(text) + (u.finish() if final else "")
        if self._pseudo is not None:
            r = self._reident.get(key)
            if r is None:
                escape = json_string_escape if self._json_slot(key[1]) else None
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

    def _json_slot(self, slot: int) -> bool:
        """A function call's arguments are JSON, and so is content asked for as JSON; prose,
        reasoning, refusals and custom inputs are not."""
        if 0 <= slot < CUSTOM or slot == FUNCTION_CALL:
            return True
        return self._json_answer and slot == CONTENT

    def _take(self, key: StreamKey, original: str) -> str:
        text = self._pipe(key, original) if self._active else original
        self._keep(key, text).sent(original)
        return text

    def _keep(self, key: StreamKey, text: str) -> _Text:
        kept = self._texts.get(key)
        if kept is None:
            kept = self._texts[key] = _Text()
        kept.append(text)
        self.size += len(text)
        return kept

    def apply(self, event: dict[str, Any]) -> bool:
        changed = False
        for choice in event.get("choices") or ():
            if self._active and isinstance(choice, dict):
                changed = self._choice_extras(choice) or changed
            if self._legacy:
                delta = choice if isinstance(choice, dict) else None
            else:
                delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            idx = choice.get("index", 0)
            if self._active and choice.get("logprobs") is not None:
                # Token logprobs spell the text as the upstream wrote it, including what is
                # still held back and may yet be masked: held until their text is released
                # (_release_logprobs), and only while they spell it exactly.
                if not self._legacy:
                    self._hold_logprobs(idx, choice["logprobs"])
                choice["logprobs"] = None
                changed = True
            for slot, name in self._fields.items():
                original = delta.get(name)
                if not isinstance(original, str):
                    continue
                text = self._take((idx, slot), original)
                if text != original:
                    delta[name] = text
                    changed = True
                self._last = event
            audio = delta.get("audio")
            if isinstance(audio, dict) and isinstance(audio.get("transcript"), str):
                original = audio["transcript"]
                text = self._take((idx, TRANSCRIPT), original)
                if text != original:
                    audio["transcript"] = text
                    changed = True
                self._last = event
            notes = delta.get("annotations")
            if notes and self._active:
                self._whole(_inspect_notes, notes)
                changed = True
            if not self._legacy and self._active:
                for name in [n for n in delta if n not in _KNOWN_IN_MESSAGE]:
                    for holder, key, place in other_strings(delta, name):
                        original = holder[key]
                        text = self._take((idx, self._other_slot(place, holder)), original)
                        if text != original:
                            holder[key] = text
                            changed = True
                        self._last = event
            fc = delta.get("function_call")
            if isinstance(fc, dict) and isinstance(fc.get("arguments"), str):
                original = fc["arguments"]
                text = self._take((idx, FUNCTION_CALL), original)
                if text != original:
                    fc["arguments"] = text
                    changed = True
                self._last = event
            calls = delta.get("tool_calls")
            placed: list[Any] = []  # the delta's tool calls, after what a new one closes
            for n, call in enumerate(calls if isinstance(calls, list) else ()):
                if not isinstance(call, dict):
                    placed.append(call)
                    continue
                k = call.get("index", n)
                k = k if isinstance(k, int) and 0 <= k < CUSTOM else n
                if self._active and self._call_at.get(idx) != k:
                    # A new tool call starts: clients (the SDKs' stream helpers) take the
                    # choice's text and its previous call as complete now, so what is held
                    # back of them goes out first, in this event.
                    changed = self._close_others(idx, k, delta, placed) or changed
                self._call_at[idx] = k
                placed.append(call)
                for holder, name, slot in (
                    (call.get("function"), "arguments", k),
                    (call.get("custom"), "input", CUSTOM + k),
                ):
                    if not isinstance(holder, dict) or not isinstance(holder.get(name), str):
                        continue
                    original = holder[name]
                    text = self._take((idx, slot), original)
                    if text != original:
                        holder[name] = text
                        changed = True
                    self._last = event
            if isinstance(calls, list) and len(placed) != len(calls):
                delta["tool_calls"] = placed
            if choice.get("finish_reason") is not None and self._active:
                changed = self._flush(idx, delta) or changed
            if self._logprobs and not self._legacy:
                changed = self._release_logprobs(idx, choice, delta) or changed
        return changed

    def _hold_logprobs(self, idx: Any, logprobs: Any) -> None:
        """Keep a chunk's token logprobs (chat's ``content`` and ``refusal`` lists) until the
        text they spell is released."""
        if not isinstance(logprobs, dict):
            return
        for name in ("content", "refusal"):
            tokens = logprobs.get(name)
            if isinstance(tokens, list) and tokens:
                held = self._logprobs.setdefault((idx, name), _HeldTokens())
                held.pending.extend(tokens)

    def _release_logprobs(self, idx: Any, choice: dict[str, Any], delta: dict[str, Any]) -> bool:
        """Give the chunk the logprobs of the tokens its released text completes. A token whose
        text was not released as the model wrote it (masked, cut, re-identified) ends the
        choice's logprobs there: neither it nor any after it goes out."""
        out: dict[str, Any] = {}
        for name in ("content", "refusal"):
            held = self._logprobs.get((idx, name))
            text = delta.get(name)
            if held is not None and isinstance(text, str) and text:
                tokens = held.release(text)
                if tokens:
                    out[name] = tokens
        if not out:
            return False
        choice["logprobs"] = {"content": out.get("content"), "refusal": out.get("refusal")}
        return True

    def _close_others(self, idx: int, call: int, delta: dict[str, Any], placed: list[Any]) -> bool:
        """Choice ``idx`` starts tool call ``call``: send what is held back of its every other
        text (content, earlier calls' arguments) in ``delta``, an earlier call's before the
        new call (``placed``, the delta's calls so far)."""
        added = False
        for key in sorted(k for k in self._texts if k[0] == idx and k not in self._finished):
            slot = key[1]
            if slot in (call, CUSTOM + call):
                continue
            rest = self._pipe(key, "", final=True)
            self._finished.add(key)
            if not rest:
                continue
            self._keep(key, rest)
            added = True
            if not 0 <= slot < FUNCTION_CALL:
                self._put_rest(delta, slot, rest)
                continue
            _put_call_rest(placed, slot, rest)
        return added

    def _put_rest(self, delta: dict[str, Any], slot: int, rest: str) -> None:
        """Add ``rest`` of a text that is not a tool call's to ``delta``."""
        if slot < 0:
            name = self._fields[slot]
            delta[name] = (delta.get(name) or "") + rest
        elif slot >= OTHER:
            self._put_other(delta, slot, rest)
        elif slot == TRANSCRIPT:
            audio = delta.setdefault("audio", {})
            audio["transcript"] = (audio.get("transcript") or "") + rest
        else:  # FUNCTION_CALL
            fc = delta.setdefault("function_call", {})
            fc["arguments"] = (fc.get("arguments") or "") + rest

    def _choice_extras(self, choice: dict[str, Any]) -> bool:
        """A choice's fields sekisho does not know, read whole (``_KNOWN_IN_CHOICE``); True if
        a string of them changed."""
        known = _KNOWN_IN_LEGACY_CHOICE if self._legacy else _KNOWN_IN_CHOICE
        names = [n for n in choice if n not in known]
        if not names:
            return False
        extras = {n: choice[n] for n in names}
        strings = value_strings(extras)
        if not strings:  # vLLM's stop_reason null or a token id, on every event
            return False
        before = [holder[key] for holder, key in strings]  # type: ignore[index]
        self._whole(inspect_value, extras)
        choice.update(extras)
        return [holder[key] for holder, key in strings] != before  # type: ignore[index]

    def _flush(self, idx: int, delta: dict[str, Any]) -> bool:
        """A choice is finishing: what was held back of it goes out in this event, before the
        finish reason (and before a usage event after it), as the client expects."""
        added = False
        for key in sorted(k for k in self._texts if k[0] == idx):
            rest = self._pipe(key, "", final=True)
            self._finished.add(key)
            if not rest:
                continue
            self._keep(key, rest)
            added = True
            slot = key[1]
            if not 0 <= slot < FUNCTION_CALL:
                self._put_rest(delta, slot, rest)
                continue
            _put_call_rest(delta.setdefault("tool_calls", []), slot, rest)
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
            self._keep(key, rest)
            idx, slot = key
            delta = deltas.setdefault(idx, {})
            if slot < 0:
                delta[self._fields[slot]] = rest
            elif slot >= OTHER:
                self._put_other(delta, slot, rest)
            elif slot == TRANSCRIPT:
                delta["audio"] = {"transcript": rest}
            elif slot == FUNCTION_CALL:
                delta["function_call"] = {"arguments": rest}
            else:
                index, kind, name = _call_slot(slot)
                delta.setdefault("tool_calls", []).append({"index": index, kind: {name: rest}})
        if not deltas:
            return None
        if self._legacy:
            choices = [
                {"index": idx, **delta, "logprobs": None, "finish_reason": None}
                for idx, delta in sorted(deltas.items())
            ]
        else:
            choices = [
                {"index": idx, "delta": delta, "finish_reason": None}
                for idx, delta in sorted(deltas.items())
            ]
        base = {k: v for k, v in self._last.items() if k not in ("choices", "usage")}
        return {**base, "choices": choices}

    def _whole(
        self,
        inspect: Callable[..., tuple[str | None, list[str]]],
        value: Any,
        skip: frozenset[str] | None = None,
    ) -> bool:
        """A value read whole (a text's citations, a hosted tool's item), in place, as
        ``inspect`` (``_inspect_notes``, ``inspect_value``) does it; the same string becomes
        the same text each time the stream repeats it. False when the value is not to be
        delivered: it holds what ``cut`` cuts, or it could not be inspected (fail closed)."""
        kw = {} if skip is None else {"skip": skip}
        try:
            if self.error_code == "output_inspection_failed":
                raise _Withheld
            found, texts = inspect(value, self._pseudo, self._rule, self._scanner, self._seen, **kw)
        except Exception as exc:
            if not isinstance(exc, _Withheld):
                log.exception("output inspection failed; rest of the stream withheld")
                self.error_code = "output_inspection_failed"
            _blank(value)
            return False
        if found is not None:
            self.error_code = _worse(self.error_code, found)
        for text in texts:
            if text not in self._delivered_extras:
                self._delivered_extras.add(text)
                self._extras.append(text)
        return found != "output_cut"

    def _other_slot(self, place: tuple[Any, ...], holder: Any) -> int:
        """The OTHER slot of a string of an unknown field, by its place (the same place in
        each delta is one text, its pieces inspected together, as content's are)."""
        slot = self._other_slots.get(place)
        if slot is None:
            slot = self._other_slots[place] = OTHER + len(self._other_slots)
            # What a held-back piece goes out in: its holder's kind and number (a reasoning
            # detail's type, format and index), without its texts or its opaque values.
            like = None
            if len(place) > 1 and isinstance(holder, dict):
                like = {k: v for k, v in holder.items() if k in ("type", "format", "index")}
            self._other_places[slot] = (place, like)
        return slot

    def _put_other(self, delta: dict[str, Any], slot: int, rest: str) -> None:
        """Text held back of an unknown field's string, into ``delta`` where it came from."""
        place, like = self._other_places[slot]
        name = place[0]
        if len(place) == 1:  # the field is the string
            have = delta.get(name)
            delta[name] = (have if isinstance(have, str) else "") + rest
            return
        holder_path, leaf = place[1:-1], place[-1]
        node: Any = [rest] if like is None else {**like, leaf: rest}
        for step in reversed(holder_path):
            node = [node] if isinstance(step, int) else {step: node}
        have = delta.get(name)
        if isinstance(have, list) and isinstance(node, list):
            have.extend(node)
        elif isinstance(have, dict) and isinstance(node, dict):
            have.update(node)
        else:
            delta[name] = node

    def texts(self) -> list[str]:
        """Each choice's content, then each of its tool calls' arguments, as delivered; then
        the strings of values read whole (citations, hosted tools' items)."""
        return [self._texts[key].value() for key in sorted(self._texts)] + self._extras

    def generated_tokens(self) -> int:
        """An estimate of the tokens the endpoint generated so far (``estimate_tokens`` of
        every text as the endpoint sent it), for a stream whose endpoint reports no usage:
        the text delivered, and also what the output rule still holds back to inspect (up to
        its look-behind: a client that leaves mid-stream never gets it), what it cut, and
        placeholders not yet restored. The endpoint spent them all the same."""
        n = sum(-(-t.sent_ascii // 4) + t.sent_other for t in self._texts.values())
        return n + estimate_tokens(self._extras)


class _Withheld(Exception):
    """Nothing more of the stream is delivered: an earlier text could not be inspected."""


_BASE64_URL = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.ASCII)


def other_strings(msg: dict[str, Any], name: str) -> list[tuple[Any, Any, tuple[Any, ...]]]:
    """Every string of the field ``name`` of a chat message or delta, as ``(holder, key,
    place)`` in document order, but what is opaque on purpose (``_OPAQUE_IN_OTHER``, a
    base64 data URL: an image). ``place``: the field, then the steps to the string, an
    element of a list numbered by its own ``index`` when it has one (a streamed reasoning
    detail is the same text in every delta, its place in the delta's list or not)."""
    out: list[tuple[Any, Any, tuple[Any, ...]]] = []
    stack: list[tuple[Any, Any, tuple[Any, ...]]] = [(msg, name, (name,))]
    while stack:
        holder, key, place = stack.pop()
        value = holder[key]
        if isinstance(value, str):
            if not _BASE64_URL.match(value):
                out.append((holder, key, place))
        elif isinstance(value, dict):
            inner: list[tuple[Any, Any, tuple[Any, ...]]] = [
                (value, k, (*place, k)) for k in value if k not in _OPAQUE_IN_OTHER
            ]
            stack.extend(reversed(inner))
        elif isinstance(value, list):
            inner = []
            for i, x in enumerate(value):
                n = x.get("index") if isinstance(x, dict) else None
                n = n if isinstance(n, int) and not isinstance(n, bool) else i
                inner.append((value, i, (*place, n)))
            stack.extend(reversed(inner))
    return out


def _call_slot(slot: int) -> tuple[int, str, str]:
    """A tool call's stream slot as (call index, holder key, text key)."""
    if slot >= CUSTOM:
        return slot - CUSTOM, "custom", "input"
    return slot, "function", "arguments"


def _put_call_rest(calls: list[Any], slot: int, rest: str) -> None:
    """Add ``rest`` of a tool call's text (slot ``slot``) to the delta's ``calls``: to the entry
    of that call if the delta has one, else as a new entry."""
    index, kind, name = _call_slot(slot)
    for call in calls:
        holder = call.get(kind) if isinstance(call, dict) else None
        if isinstance(call, dict) and call.get("index") == index and isinstance(holder, dict):
            holder[name] = (holder.get(name) or "") + rest
            return
    calls.append({"index": index, kind: {name: rest}})


def inspect_answer(
    data: dict[str, Any],
    pseudo: Pseudonymiser | None,
    rule: OutputRuleView,
    scanner: Scanner,
    request_id: str,
    *,
    json_answer: bool = False,
) -> tuple[str | None, list[str]]:
    """A complete chat answer, in place: re-identify pseudonyms, then apply the output rule
    (mask or cut), in every choice's content and in the arguments of every tool call it makes.
    ``json_answer``: the content is JSON (``answers_in_json``). Returns the error code to
    record (None, output_masked, output_cut or output_inspection_failed) and the texts as
    delivered."""
    error: str | None = None
    delivered: list[str] = []
    types = frozenset(rule.types)
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        try:
            found, texts = _inspect_choice_extras(choice, pseudo, rule, scanner)
        except Exception:
            log.exception(
                "output inspection failed; answer withheld", extra={"request_id": request_id}
            )
            msg = choice.get("message")
            _withhold(choice, msg if isinstance(msg, dict) else choice)
            error = "output_inspection_failed"
            continue
        delivered.extend(texts)
        if found is not None:
            error = _worse(error, found)
        if found == "output_cut":  # cut where the identifier starts; the choice ends there
            choice["finish_reason"] = "content_filter"
        msg = choice.get("message")
        slots: list[tuple[dict[str, Any], str]] = []
        if not isinstance(msg, dict):
            if "message" in choice or not isinstance(choice.get("text"), str):
                continue
            msg = choice  # a legacy completion: the choice holds its text
            slots.append((choice, "text"))
        for name in TEXT_FIELDS.values():  # reasoning first, as the model wrote it
            if isinstance(msg.get(name), str):
                slots.append((msg, name))
        audio = msg.get("audio")  # a spoken answer's transcript: the answer, in text
        if isinstance(audio, dict) and isinstance(audio.get("transcript"), str):
            slots.append((audio, "transcript"))
        calls = [c for c in msg.get("tool_calls") or () if isinstance(c, dict)]
        fc = msg.get("function_call")
        for fn in [c.get("function") for c in calls] + [fc]:
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                slots.append((fn, "arguments"))
        for custom in [c.get("custom") for c in calls]:  # a custom tool's free-text input
            if isinstance(custom, dict) and isinstance(custom.get("input"), str):
                slots.append((custom, "input"))
        if msg is not choice:  # a chat message's fields sekisho does not know: read too
            try:
                found, texts = _inspect_others(msg, pseudo, rule, scanner)
            except Exception:
                log.exception(
                    "output inspection failed; answer withheld", extra={"request_id": request_id}
                )
                _withhold(choice, msg)
                error = "output_inspection_failed"
                continue
            delivered.extend(texts)
            if found is not None:
                error = _worse(error, found)
            if found == "output_cut":
                # Text the model wrote before its answer (reasoning details): cut as
                # reasoning is, and the answer after it goes with it.
                if isinstance(msg.get("content"), str):
                    msg["content"] = ""
                for name in ("tool_calls", "function_call", "audio", "annotations"):
                    msg.pop(name, None)
                choice["finish_reason"] = "content_filter"
                slots = [(h, k) for h, k in slots if k in TEXT_FIELDS.values()]
        before = [(holder, key, holder[key]) for holder, key in slots]
        for holder, key in slots:
            text = holder[key]
            hits: list[Finding] = []
            json_text = key == "arguments" or (json_answer and key == "content")
            if json_text and rule.action != "none":
                text = unescape_json_escapes(text)  # read past \uXXXX (JsonUnescaper)
            if pseudo is not None:  # arguments are JSON: a restored value is escaped for it
                text = pseudo.reidentify(text, json_string_escape if json_text else None)
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
                elif hits and key in ("content", "text", "refusal", "transcript"):
                    text = text[: hits[0].start]
                    choice["finish_reason"] = "content_filter"
                    error = _worse(error, "output_cut")
                elif hits and key not in ("arguments", "input"):
                    # Reasoning is cut where the identifier starts, and the answer that
                    # followed it goes with it: what came after the cut is not delivered.
                    holder[key] = text[: hits[0].start]
                    delivered.append(holder[key])
                    if isinstance(msg.get("content"), str):
                        msg["content"] = ""
                    msg.pop("tool_calls", None)
                    msg.pop("function_call", None)
                    msg.pop("audio", None)
                    msg.pop("annotations", None)
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
            if key == "transcript" and hits:
                # The audio says aloud what the output rule just masked or cut in its
                # transcript, and sekisho cannot edit speech: it is withheld.
                holder["data"] = ""
            holder[key] = text
            delivered.append(text)
        notes = msg.get("annotations")
        if notes and error != "output_inspection_failed":
            try:
                found, texts = _inspect_notes(notes, pseudo, rule, scanner)
            except Exception:
                log.exception(
                    "output inspection failed; answer withheld", extra={"request_id": request_id}
                )
                _withhold(choice, msg)
                error = "output_inspection_failed"
            else:
                delivered.extend(texts)
                if found is not None:
                    error = _worse(error, found)
                if found == "output_cut":
                    choice["finish_reason"] = "content_filter"
        if choice.get("logprobs") is not None and (
            choice.get("finish_reason") == "content_filter"
            or any(holder.get(key) != text for holder, key, text in before)
        ):
            # They spell the text as the upstream wrote it: gone with the text they describe.
            choice["logprobs"] = None
    return error, delivered


def _clear_logprobs(holder: Any) -> bool:
    """Empty the ``logprobs`` of a Responses output text part or event; True if there were any."""
    if isinstance(holder, dict) and holder.get("logprobs"):
        holder["logprobs"] = []
        return True
    return False


def answers_in_json(kind: str, body: dict[str, Any]) -> bool:
    """Whether a request asks for its answer's text as JSON (chat's ``response_format``, the
    Responses API's ``text.format``: ``json_schema`` or ``json_object``). A value restored
    into such text is escaped for a JSON string, as in a tool call's arguments: a quote in it
    would otherwise end the string, and the client's ``parse()`` would fail on the answer."""
    if kind == "chat":
        fmt = body.get("response_format")
    elif kind == "responses":
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
    else:
        return False
    return isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object")


def unescape_json_escapes(text: str) -> str:
    """JSON text (a call's arguments) with its ``\\uXXXX`` escapes written as characters, so
    the output rule reads them: a server whose JSON writer escapes non-ASCII (Python's
    ``json.dumps`` by default) would otherwise pass a name or an address the rule masks."""
    return JSON_ESCAPE.sub(unescaped, text) if "\\u" in text else text


class JsonUnescaper:
    """``unescape_json_escapes`` for JSON text that streams in pieces: an escape split across
    pieces (``\\u5c`` | ``71``, a surrogate pair, a lone backslash) is held until whole."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, chunk: str) -> str:
        text = self._held + chunk
        cut = _incomplete_escape(text)
        self._held = text[cut:]
        return unescape_json_escapes(text[:cut])

    def finish(self) -> str:
        rest, self._held = self._held, ""
        return unescape_json_escapes(rest)


def _incomplete_escape(text: str) -> int:
    """Where an escape that the rest of the stream may complete starts (``len(text)``: none).
    ``text`` starts at an escape's boundary, so backslashes pair up from its start."""
    i = 0
    while (j := text.find("\\", i)) >= 0:
        if j + 1 >= len(text):
            return j
        if text[j + 1] != "u":
            i = j + 2
            continue
        if j + 6 > len(text):
            return j
        high = text[j + 2] in "dD" and text[j + 3] in "89abAB"
        if high and j + 12 > len(text):
            return j  # a high surrogate: its low half may come next
        i = j + 6
    return len(text)


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
    msg["text" if msg is choice else "content"] = ""
    for name in TEXT_FIELDS.values():
        if isinstance(msg.get(name), str):
            msg[name] = ""
    for name in ("tool_calls", "function_call", "audio", "annotations"):
        msg.pop(name, None)
    if msg is not choice:
        for name in [n for n in msg if n not in _KNOWN_IN_MESSAGE]:
            del msg[name]  # fields sekisho does not know, their texts with the rest
    known = _KNOWN_IN_CHOICE if "message" in choice else _KNOWN_IN_LEGACY_CHOICE
    for name in [n for n in choice if n not in known]:
        del choice[name]
    choice["finish_reason"] = "content_filter"


def _inspect_choice_extras(
    choice: dict[str, Any], pseudo: Pseudonymiser | None, rule: OutputRuleView, scanner: Scanner
) -> tuple[str | None, list[str]]:
    """The fields of a whole answer's choice sekisho does not know (``_KNOWN_IN_CHOICE``), in
    place, every string of them read whole (``inspect_value``). Raises as it does."""
    if pseudo is None and rule.action == "none":
        return None, []
    known = _KNOWN_IN_CHOICE if "message" in choice else _KNOWN_IN_LEGACY_CHOICE
    names = [n for n in choice if n not in known]
    if not names:
        return None, []
    extras = {n: choice[n] for n in names}
    found, texts = inspect_value(extras, pseudo, rule, scanner)
    choice.update(extras)
    return found, texts


def _inspect_others(
    msg: dict[str, Any], pseudo: Pseudonymiser | None, rule: OutputRuleView, scanner: Scanner
) -> tuple[str | None, list[str]]:
    """The fields of a whole chat message sekisho does not know (OpenRouter's
    ``reasoning_details``, LiteLLM's ``thinking_blocks``), in place: every string of them
    (``other_strings``) re-identified and masked as content is; under ``cut`` the string with
    the first identifier ends there and every string after it is emptied. Returns the error
    code and the strings delivered. Raises when a string cannot be inspected."""
    if pseudo is None and rule.action == "none":
        return None, []
    error: str | None = None
    delivered: list[str] = []
    types = frozenset(rule.types)
    for name in [n for n in msg if n not in _KNOWN_IN_MESSAGE]:
        for holder, key, _ in other_strings(msg, name):
            text = holder[key]
            if error == "output_cut":
                holder[key] = ""
                continue
            if pseudo is not None:
                text = pseudo.reidentify(text)
            if rule.action != "none":
                hits = [f for f in scanner.scan(text) if f.type in types]
                if hits and rule.action == "mask":
                    text = redact(text, hits)
                    error = _worse(error, "output_masked")
                elif hits:
                    text = text[: hits[0].start]
                    error = "output_cut"
            holder[key] = text
            delivered.append(text)
    return error, delivered


# -- text beyond the text slots ------------------------------------------------------------------
#
# An answer carries text outside its text slots too: the citations of a model that searched
# the web (a chat message's ``annotations``, a Responses output text's), and the items of the
# tools a provider runs itself (a web search's query and the pages it opened, a code
# interpreter's logs, an MCP tool's output, a file search's results). Each is a small JSON
# value read whole, every string in it, except these keys: names of the value's kind and
# state, ids, opaque or binary payloads.
_NOT_TEXT = frozenset(
    {"type", "id", "status", "call_id", "item_id", "encrypted_content", "logprobs"}
)
# Base64 images a provider's image generation tool returns (whole or partial): not text.
_BINARY = frozenset({"result", "partial_image_b64"})


def value_strings(
    node: Any, skip: frozenset[str] = _NOT_TEXT
) -> list[tuple[dict[str, Any] | list[Any], str | int]]:
    """Every string in a JSON value as ``(container, key)``, in document order, except under
    the keys in ``skip``. Iterative: a provider's value may nest deep."""
    out: list[tuple[dict[str, Any] | list[Any], str | int]] = []
    stack: list[Any] = [node]
    while stack:
        n = stack.pop()
        pairs: Any = n.items() if isinstance(n, dict) else enumerate(n)
        nested = []
        for k, v in pairs:
            if k in skip:
                continue
            if isinstance(v, str):
                out.append((n, k))
            elif isinstance(v, dict | list):
                nested.append(v)
        stack.extend(reversed(nested))
    return out


def inspect_value(
    node: Any,
    pseudo: Pseudonymiser | None,
    rule: OutputRuleView,
    scanner: Scanner,
    seen: dict[str, tuple[str, bool]] | None = None,
    skip: frozenset[str] = _NOT_TEXT,
) -> tuple[str | None, list[str]]:
    """Every string in ``node`` (a citation, a hosted tool's item), in place, as one whole
    text each: pseudonyms restored, then the output rule's findings masked, or under ``cut``
    the string cut where the first one starts and the value reported (``output_cut``): a
    whole answer drops the value or ends before it (half a URL is no citation). ``seen``
    keeps what each string became, so that a stream that repeats a value (an item when added,
    when done, in the final response) delivers it alike each time. Returns the error code
    (None, output_masked, output_cut) and the strings as delivered. Raises when a string
    cannot be inspected."""
    error: str | None = None
    delivered: list[str] = []
    types = rule.types
    for holder, key in value_strings(node, skip):
        original: str = holder[key]  # type: ignore[index]
        known = seen.get(original) if seen is not None else None
        if known is not None:
            text, hit = known
        else:
            text, hit = original, False
            if pseudo is not None:
                text = pseudo.reidentify(text)
            if rule.action != "none" and text:
                hits = [f for f in scanner.scan(text) if f.type in types]
                hit = bool(hits)
                if hits and rule.action == "mask":
                    text = redact(text, hits)
                elif hits:
                    text = text[: hits[0].start]
            if seen is not None:
                seen[original] = (text, hit)
        if hit:
            error = "output_cut" if rule.action == "cut" else "output_masked"
        holder[key] = text  # type: ignore[index]
        delivered.append(text)
    return error, delivered


def _inspect_notes(
    notes: Any,
    pseudo: Pseudonymiser | None,
    rule: OutputRuleView,
    scanner: Scanner,
    seen: dict[str, tuple[str, bool]] | None = None,
) -> tuple[str | None, list[str]]:
    """A text's citations (``annotations``), in place: masked, or under ``cut`` each one that
    holds a finding dropped. Returns the error code and the strings delivered."""
    if not isinstance(notes, list):
        return None, []
    error: str | None = None
    delivered: list[str] = []
    kept = []
    for note in notes:
        found, texts = inspect_value(note, pseudo, rule, scanner, seen)
        if found is not None:
            error = _worse(error, found)
        if found != "output_cut":
            kept.append(note)
            delivered.extend(texts)
    if len(kept) != len(notes):
        notes[:] = kept
    return error, delivered


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


# -- the Responses API --------------------------------------------------------------------------
#
# Its output is a list of items; the texts a client receives sit in message parts
# (output_text, refusal), reasoning summaries and reasoning text, function call arguments and
# custom tool call input. A stream sends each as deltas, then repeats it whole in a chain of
# "done" events and in the final response. Each text has a key (output index, slot): the slot
# says which text of the item, negative for prose, 0 for JSON arguments (a re-identified value
# is escaped for JSON there, as in chat).

_OUTPUT_TEXT, _SUMMARY, _REASONING_TEXT, _REFUSAL, _CUSTOM_INPUT = -100, -200, -300, -400, -500
_CODE = -600  # the code a provider's code interpreter runs
_ARGUMENTS, _MCP_ARGUMENTS = 0, 1  # JSON: a function call's, a provider-run MCP tool's
# An item's one text (no index within the item); the JSON ones; the ones a tool runs, which
# cut short would be a broken call rather than a shorter one.
_WHOLE_SLOTS = (_ARGUMENTS, _MCP_ARGUMENTS, _CUSTOM_INPUT, _CODE)
_JSON_SLOTS = (_ARGUMENTS, _MCP_ARGUMENTS)

# delta event type -> (the field numbering texts within the item, slot base, text field)
_R_DELTAS: dict[str, tuple[str | None, int]] = {
    "response.output_text.delta": ("content_index", _OUTPUT_TEXT),
    "response.refusal.delta": ("content_index", _REFUSAL),
    "response.reasoning_summary_text.delta": ("summary_index", _SUMMARY),
    "response.reasoning_text.delta": ("content_index", _REASONING_TEXT),
    "response.function_call_arguments.delta": (None, _ARGUMENTS),
    "response.custom_tool_call_input.delta": (None, _CUSTOM_INPUT),
    "response.code_interpreter_call_code.delta": (None, _CODE),
    "response.mcp_call_arguments.delta": (None, _MCP_ARGUMENTS),
}
_R_DONES: dict[str, tuple[str | None, int, str]] = {
    "response.output_text.done": ("content_index", _OUTPUT_TEXT, "text"),
    "response.refusal.done": ("content_index", _REFUSAL, "refusal"),
    "response.reasoning_summary_text.done": ("summary_index", _SUMMARY, "text"),
    "response.reasoning_text.done": ("content_index", _REASONING_TEXT, "text"),
    "response.function_call_arguments.done": (None, _ARGUMENTS, "arguments"),
    "response.custom_tool_call_input.done": (None, _CUSTOM_INPUT, "input"),
    "response.code_interpreter_call_code.done": (None, _CODE, "code"),
    "response.mcp_call_arguments.done": (None, _MCP_ARGUMENTS, "arguments"),
}
_R_DELTA_OF = {base: (etype, sub) for etype, (sub, base) in _R_DELTAS.items()}
# Events repeating one part of an item whole, or starting one: the item they stand for.
_R_PART_DONES = frozenset({"response.content_part.done", "response.reasoning_summary_part.done"})
_R_PART_ADDS = frozenset({"response.content_part.added", "response.reasoning_summary_part.added"})
# What in an event of another kind is no text: its kind, ids, statuses, partial images.
_NOT_IN_EVENT = _NOT_TEXT | _BINARY
# Events that end a response stream.
RESPONSE_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Events carrying a whole item or response at its start: texts are empty or a preview.
_R_STARTS = frozenset({"response.created", "response.in_progress", "response.queued"})


def _part_item(etype: str, event: dict[str, Any]) -> dict[str, Any] | None:
    """The item a part event stands for: its part at its index (a message's content part, a
    reasoning item's summary part)."""
    part = event.get("part")
    if not isinstance(part, dict):
        return None
    if etype.startswith("response.reasoning_summary_part."):
        return {"type": "reasoning", "summary": [None] * _int0(event.get("summary_index")) + [part]}
    return {"type": "message", "content": [None] * _int0(event.get("content_index")) + [part]}


def _json_slot(slot: int, json_answer: bool) -> bool:
    """Whether a Responses text is JSON: a call's arguments, or output text asked for as JSON."""
    return slot in _JSON_SLOTS or (json_answer and _OUTPUT_TEXT - 99 <= slot <= _OUTPUT_TEXT)


def _slot(base: int, sub: Any) -> int:
    return base if base in _WHOLE_SLOTS else base - min(_int0(sub), 99)


def _int0(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def response_item_slots(item: Any, oi: int) -> list[tuple[dict[str, Any], str, StreamKey]]:
    """Where the texts of one output item sit: ``(holder, field, key)``, in item order."""
    slots: list[tuple[dict[str, Any], str, StreamKey]] = []
    if not isinstance(item, dict):
        return slots
    kind = item.get("type")
    if kind == "message":
        for ci, part in enumerate(_parts_of(item, "content")):
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                slots.append((part, "text", (oi, _OUTPUT_TEXT - ci)))
            elif isinstance(part.get("refusal"), str):
                slots.append((part, "refusal", (oi, _REFUSAL - ci)))
    elif kind == "reasoning":
        for si, part in enumerate(_parts_of(item, "summary")):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                slots.append((part, "text", (oi, _SUMMARY - si)))
        for ci, part in enumerate(_parts_of(item, "content")):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                slots.append((part, "text", (oi, _REASONING_TEXT - ci)))
    elif kind == "function_call" and isinstance(item.get("arguments"), str):
        slots.append((item, "arguments", (oi, _ARGUMENTS)))
    elif kind == "custom_tool_call" and isinstance(item.get("input"), str):
        slots.append((item, "input", (oi, _CUSTOM_INPUT)))
    elif kind == "code_interpreter_call" and isinstance(item.get("code"), str):
        slots.append((item, "code", (oi, _CODE)))
    elif kind == "mcp_call" and isinstance(item.get("arguments"), str):
        slots.append((item, "arguments", (oi, _MCP_ARGUMENTS)))
    return slots


def _parts_of(item: dict[str, Any], name: str) -> list[Any]:
    """An item's list of parts (a response's list of items); nothing for anything else,
    which ``_upstream.output_problem`` refuses before it gets here."""
    parts = item.get(name)
    return parts if isinstance(parts, list) else []


# An item whose texts are in slots above (a message, reasoning, a function or custom tool
# call: ``_ITEM_FIELDS``) has its other fields read whole, and a message its citations; any
# other item (a tool the provider runs, a computer or shell action) is read whole, but for
# what its slot holds and a generated image.
_SKIP_IN = {
    "code_interpreter_call": _NOT_TEXT | {"code"},
    "mcp_call": _NOT_TEXT | {"arguments"},
    "image_generation_call": _NOT_TEXT | _BINARY,
}


# The fields of a message and of the slotted items, and of a message's parts, that the slots,
# the citations or nothing (ids, kinds, statuses, opaque reasoning) account for: a string in
# any other field (one a provider adds, or newer than this gateway) is read whole.
_ITEM_FIELDS = {
    "message": frozenset({"type", "id", "role", "status", "content"}),
    "reasoning": frozenset({"type", "id", "status", "summary", "content", "encrypted_content"}),
    "function_call": frozenset({"type", "id", "call_id", "name", "arguments", "status"}),
    "custom_tool_call": frozenset({"type", "id", "call_id", "name", "input", "status"}),
}
_PART_FIELDS = frozenset({"type", "text", "refusal", "annotations", "logprobs"})


def _unknown(holder: Any, known: frozenset[str]) -> list[str]:
    return [k for k in holder if k not in known] if isinstance(holder, dict) else []


def has_extras(item: Any) -> bool:
    """Whether an output item carries text beyond its slots (a dict lookup for most)."""
    if not isinstance(item, dict):
        return False
    kind = item.get("type")
    if not isinstance(kind, str) or kind not in _ITEM_FIELDS:
        return True
    if _unknown(item, _ITEM_FIELDS[kind]):
        return True
    return kind == "message" and any(
        isinstance(p, dict) and (p.get("annotations") or _unknown(p, _PART_FIELDS))
        for p in _parts_of(item, "content")
    )


def item_extras(
    item: Any,
    pseudo: Pseudonymiser | None,
    rule: OutputRuleView,
    scanner: Scanner,
    seen: dict[str, tuple[str, bool]] | None = None,
) -> tuple[str | None, list[str]]:
    """The text of an output item beyond its slots, in place: a message's citations (under
    ``cut``, one that holds a finding is dropped), every string of any other item. Returns
    the error code and the strings delivered. Raises when a string cannot be inspected."""
    if (pseudo is None and rule.action == "none") or not has_extras(item):
        return None, []
    kind = item.get("type")
    if not isinstance(kind, str) or kind not in _ITEM_FIELDS:
        skip = _SKIP_IN.get(kind, _NOT_TEXT) if isinstance(kind, str) else _NOT_TEXT
        return inspect_value(item, pseudo, rule, scanner, seen, skip)
    error: str | None = None
    delivered: list[str] = []
    holders: list[tuple[dict[str, Any], frozenset[str]]] = [(item, _ITEM_FIELDS[kind])]
    if kind == "message":
        holders += [(p, _PART_FIELDS) for p in _parts_of(item, "content") if isinstance(p, dict)]
    for holder, known in holders:
        notes = holder.get("annotations") if holder is not item else None
        if notes:
            found, texts = _inspect_notes(notes, pseudo, rule, scanner, seen)
            error = _worse(error, found) if found is not None else error
            delivered.extend(texts)
        names = _unknown(holder, known)
        if names:  # fields a provider adds: every string read whole
            view = {k: holder[k] for k in names}
            found, texts = inspect_value(view, pseudo, rule, scanner, seen)
            holder.update(view)
            error = _worse(error, found) if found is not None else error
            delivered.extend(texts)
    return error, delivered


def _blank(value: Any) -> None:
    """What could not be inspected, emptied: a list of citations, a message's citations and
    the strings of an item's fields beyond its slots, every string of another item."""
    if isinstance(value, list):
        value.clear()
    elif (
        isinstance(value, dict)
        and isinstance(value.get("type"), str)
        and (value["type"] in _ITEM_FIELDS)
    ):
        kind = value["type"]
        holders = [(value, _ITEM_FIELDS[kind])]
        if kind == "message":
            holders += [
                (p, _PART_FIELDS) for p in _parts_of(value, "content") if isinstance(p, dict)
            ]
        for holder, known in holders:
            if holder is not value and isinstance(holder.get("annotations"), list):
                holder["annotations"].clear()
            for name in _unknown(holder, known):
                view: dict[str, Any] = {name: holder[name]}
                for inner, key in value_strings(view):
                    inner[key] = ""  # type: ignore[index]
                holder[name] = view[name]
    else:
        for container, key in value_strings(value):
            container[key] = ""  # type: ignore[index]


def _cut_response(data: dict[str, Any], keep: int) -> None:
    """Keep the first ``keep`` output items; the response ends there, filtered."""
    output = data.get("output")
    if isinstance(output, list):
        del output[keep:]
    data["status"] = "incomplete"
    data["incomplete_details"] = {"reason": "content_filter"}


def _refresh_output_text(data: dict[str, Any]) -> None:
    """A server that adds the SDKs' ``output_text`` convenience field gets it recomputed from
    the inspected items (it would repeat the uninspected text)."""
    if isinstance(data.get("output_text"), str):
        data["output_text"] = "".join(
            part["text"]
            for item in _parts_of(data, "output")
            if isinstance(item, dict) and item.get("type") == "message"
            for part in _parts_of(item, "content")
            if isinstance(part, dict)
            and part.get("type") == "output_text"
            and isinstance(part.get("text"), str)
        )


def inspect_response(
    data: dict[str, Any],
    pseudo: Pseudonymiser | None,
    rule: OutputRuleView,
    scanner: Scanner,
    request_id: str,
    *,
    json_answer: bool = False,
) -> tuple[str | None, list[str]]:
    """A complete Responses API answer, in place: re-identify pseudonyms, then apply the output
    rule in every text of every output item (``json_answer``: its output text is JSON).
    ``cut`` ends the output where the first identifier starts (a tool call it falls in is
    dropped whole) and marks the response incomplete (``content_filter``). Returns the error
    code to record and the delivered texts."""
    error: str | None = None
    delivered: list[str] = []
    types = frozenset(rule.types)
    output = data.get("output")
    items = output if isinstance(output, list) else []
    for oi, item in enumerate(items):
        mark = len(delivered)
        cut = False
        try:
            for holder, key, (_, slot) in response_item_slots(item, oi):
                text = holder[key]
                if rule.action != "none" and _json_slot(slot, json_answer):
                    text = unescape_json_escapes(text)
                if pseudo is not None:
                    escape = json_string_escape if _json_slot(slot, json_answer) else None
                    text = pseudo.reidentify(text, escape)
                if rule.action != "none":
                    hits = [f for f in scanner.scan(text) if f.type in types]
                    if hits and rule.action == "mask":
                        text = redact(text, hits)
                        error = _worse(error, "output_masked")
                    elif hits:
                        error = _worse(error, "output_cut")
                        if slot in _WHOLE_SLOTS:  # a tool call cut short is broken
                            _cut_response(data, oi)
                            _refresh_output_text(data)
                            return error, delivered
                        holder[key] = text[: hits[0].start]
                        _clear_logprobs(holder)
                        delivered.append(holder[key])
                        _cut_response(data, oi + 1)
                        if item.get("type") == "message":
                            del item["content"][item["content"].index(holder) + 1 :]
                        cut = True
                        break
                if text != holder[key]:
                    _clear_logprobs(holder)
                holder[key] = text
                delivered.append(text)
            # The citations of the texts delivered, a hosted tool's query and results...
            found, texts = item_extras(item, pseudo, rule, scanner)
        except Exception:
            # Fail closed: an answer that cannot be inspected is not delivered.
            log.exception(
                "output inspection failed; answer withheld", extra={"request_id": request_id}
            )
            _cut_response(data, 0)
            _refresh_output_text(data)
            return "output_inspection_failed", []
        if found is not None:
            error = _worse(error, found)
        if found == "output_cut" and item.get("type") != "message":
            del delivered[mark:]  # the item goes whole, and the answer ends before it
            _cut_response(data, oi)
            cut = True
        elif found == "output_cut":  # its citations that hold one are gone: it ends here
            delivered.extend(texts)
            _cut_response(data, oi + 1)
            cut = True
        else:
            delivered.extend(texts)
        if cut:
            break
    _refresh_output_text(data)
    return error, delivered


def _strip_logprobs(event: dict[str, Any]) -> bool:
    """Empty every output text's ``logprobs`` in a Responses stream event (a delta or done
    event, a part, an item, a response): in a stream sekisho rewrites, they would spell the
    text as the upstream wrote it, including what is held back and may yet be masked."""
    found = _clear_logprobs(event)
    found = _clear_logprobs(event.get("part")) or found
    items = [event.get("item")]
    response = event.get("response")
    if isinstance(response, dict) and isinstance(response.get("output"), list):
        items.extend(response["output"])
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("content"), list):
            for part in item["content"]:
                found = _clear_logprobs(part) or found
    return found


class ResponsesStreamOutput(StreamOutput):
    """Output inspection of a Responses API stream. Deltas go through the same per-text
    pipeline as chat's (re-identification across split placeholders, the output rule with its
    look-behind); every event that repeats a text whole (``*.done``, ``content_part.done``,
    ``output_item.done``, the final response) carries the text as it was delivered, so what a
    client accumulates from deltas and what it reads from the final response agree. Text held
    back at a text's end goes out as one more delta before its ``done`` event; sequence numbers
    after an added event are shifted to stay consecutive."""

    def __init__(
        self,
        pseudo: Pseudonymiser | None,
        tenant: TenantView,
        scanner: Scanner,
        *,
        rename: Callable[[str], str] | None = None,
        json_answer: bool = False,
    ) -> None:
        super().__init__(pseudo, tenant, scanner, json_answer=json_answer)
        # The id the client is to see for the response, from the provider's: sekisho's own
        # when it keeps the conversation, or one naming the endpoint that keeps it.
        self._rename = rename
        self._shift = 0
        self._next_seq = 0
        self._passed: dict[str, Any] | None = None  # the last event sent on unchanged
        self._item_ids: dict[int, Any] = {}
        # The client has the response's response.created: a failure now is an error event
        # about that response (_streams._response_failure).
        self.began = False

    def _json_slot(self, slot: int) -> bool:
        return _json_slot(slot, self._json_answer)

    @property
    def next_sequence(self) -> int:
        """The sequence number for an event sekisho adds after the last one sent."""
        self._sync()
        return self._next_seq

    def apply_event(self, event: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The events to send for ``event`` (it, perhaps rewritten, after any delta added before
        it); None when it goes out exactly as it came."""
        etype = event.get("type")
        if etype == "response.created":
            self.began = True
        before: list[dict[str, Any]] = []
        changed = self._active and _strip_logprobs(event)
        oi = _int0(event.get("output_index"))
        if isinstance(event.get("item_id"), str):
            self._item_ids[oi] = event["item_id"]
        if etype in _R_DELTAS:
            sub, base = _R_DELTAS[etype]
            original = event.get("delta")
            if isinstance(original, str):
                text = self._take((oi, _slot(base, event.get(sub) if sub else 0)), original)
                if text != original:
                    event["delta"] = text
                    changed = True
        elif etype in _R_DONES:
            sub, base, name = _R_DONES[etype]
            original = event.get(name)
            if isinstance(original, str):
                key = (oi, _slot(base, event.get(sub) if sub else 0))
                text = self._settle(key, original, before)
                if text != original:
                    event[name] = text
                    changed = True
        elif etype in _R_PART_DONES or etype == "response.output_item.done":
            item = event.get("item")
            if etype in _R_PART_DONES:
                item = _part_item(etype, event)
            changed = self._settle_item(item, oi, before) or changed
        elif etype == "response.output_item.added" or etype in _R_PART_ADDS:
            if etype == "response.output_item.added":
                changed = self._preview(event.get("item")) or changed
            else:
                changed = self._preview(_part_item(etype, event)) or changed
        elif etype == "response.output_text.annotation.added":
            if self._active and event.get("annotation") is not None:
                # a citation, whole: masked, or dropped with its event if it cannot go out
                if not self._whole(inspect_value, event["annotation"]):
                    self._sync()
                    self._shift -= 1
                    return []
                changed = True
        elif etype in _R_STARTS or etype in RESPONSE_TERMINAL:
            response = event.get("response")
            if isinstance(response, dict) and self._rename is not None:
                response["id"] = self._rename(str(response.get("id") or ""))
                changed = True
            if isinstance(response, dict):
                if etype in RESPONSE_TERMINAL:
                    changed = self._settle_response(response, before) or changed
                else:
                    output = response.get("output")
                    items = output if isinstance(output, list) else ()
                    previews = [self._preview(item) for item in items]
                    changed = any(previews) or changed
        elif self._active and value_strings(event, _NOT_IN_EVENT):
            # An event of a kind not named above that carries text (a hosted tool's progress
            # with a query in it, a kind newer than this gateway): each string read whole.
            self._whole(inspect_value, event, _NOT_IN_EVENT)
            changed = True
        if not before and not changed and self._shift == 0:
            self._passed = event  # its number is counted only when one is needed
            return None
        self._sync()
        out = []
        for added in before:
            added["sequence_number"] = self._next_seq
            self._next_seq += 1
            self._shift += 1
            out.append(added)
        self._renumber(event)
        out.append(event)
        return out

    def finish_response(self, terminal: dict[str, Any]) -> list[dict[str, Any]]:
        """The events ending the stream: text still held back (as deltas), then the terminal
        event with every text as delivered, marked incomplete if the output rule cut it."""
        events = self.apply_event(terminal) or [terminal]
        response = terminal.get("response")
        if isinstance(response, dict) and self.error_code in (
            "output_cut",
            "output_inspection_failed",
        ):
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": "content_filter"}
            if terminal.get("type") == "response.completed":
                terminal["type"] = "response.incomplete"
        return events

    # -- helpers ---------------------------------------------------------------------------

    def _sync(self) -> None:
        """Count the sequence number of the last event passed on unchanged."""
        if self._passed is not None:
            seq = self._passed.get("sequence_number")
            if isinstance(seq, int) and not isinstance(seq, bool):
                self._next_seq = max(self._next_seq, seq + 1)
            self._passed = None

    def _renumber(self, event: dict[str, Any]) -> None:
        seq = event.get("sequence_number")
        if isinstance(seq, int) and not isinstance(seq, bool):
            event["sequence_number"] = seq + self._shift
            self._next_seq = max(self._next_seq, seq + self._shift + 1)

    def _settle(self, key: StreamKey, original: str, before: list[dict[str, Any]]) -> str:
        """The text of ``key`` as delivered in full; what was still held back of it goes out
        as a delta added to ``before``. A text no delta carried is inspected here whole."""
        if key not in self._texts:
            self._take(key, original)
        if self._active and key not in self._finished:
            rest = self._pipe(key, "", final=True)
            self._finished.add(key)
            if rest:
                self._keep(key, rest)
                before.append(self._delta_event(key, rest))
        return self._texts[key].value()

    def _delta_event(self, key: StreamKey, text: str) -> dict[str, Any]:
        oi, slot = key
        base = slot if slot in _WHOLE_SLOTS else slot - (slot % -100 or 0)
        etype, sub = _R_DELTA_OF[base]
        event: dict[str, Any] = {"type": etype}
        if oi in self._item_ids:
            event["item_id"] = self._item_ids[oi]
        event["output_index"] = oi
        if sub is not None:
            event[sub] = base - slot
        event["delta"] = text
        if etype == "response.output_text.delta":
            event["logprobs"] = []
        return event

    def _settle_item(self, item: Any, oi: int, before: list[dict[str, Any]]) -> bool:
        changed = False
        for holder, name, key in response_item_slots(item, oi):
            text = self._settle(key, holder[name], before)
            if text != holder[name]:
                holder[name] = text
                changed = True
        if self._active and has_extras(item):
            self._whole(item_extras, item)
            changed = True
        return changed

    def _settle_response(self, response: dict[str, Any], before: list[dict[str, Any]]) -> bool:
        changed = False
        output = response.get("output")
        for oi, item in enumerate(output if isinstance(output, list) else ()):
            changed = self._settle_item(item, oi, before) or changed
        if changed:
            _refresh_output_text(response)
        return changed

    def _preview(self, holder: Any) -> bool:
        """Text in an item or part as it starts (normally empty): inspected on its own, not
        kept; the deltas that follow are the text."""
        if not self._active or not isinstance(holder, dict):
            return False
        if "type" not in holder or holder.get("type") in ("output_text", "refusal"):
            holder = {"type": "message", "content": [holder]}
        changed = False
        for part, name, (_, slot) in response_item_slots(holder, 0):
            text = part[name]
            if not text:
                continue
            if self._rule.action != "none" and self._json_slot(slot):
                text = unescape_json_escapes(text)
            if self._pseudo is not None:
                escape = json_string_escape if self._json_slot(slot) else None
                text = self._pseudo.reidentify(text, escape)
            if self._rule.action != "none":
                try:
                    hits = self._typed.scan(text)
                except Exception:
                    log.exception("output inspection failed; text withheld")
                    self.error_code = "output_inspection_failed"
                    hits, text = [], ""
                if hits and self._rule.action == "mask":
                    text = redact(text, hits)
                    self.error_code = _worse(self.error_code, "output_masked")
                elif hits:
                    text = text[: hits[0].start]
                    self.error_code = _worse(self.error_code, "output_cut")
            if text != part[name]:
                part[name] = text
                changed = True
        if has_extras(holder):
            self._whole(item_extras, holder)
            changed = True
        return changed
