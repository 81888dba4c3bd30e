"""Steps 7-9 for a streamed answer: each event is inspected as it passes (pseudonyms
restored, the tenant's output rule applied across event boundaries), and the stream's last
event (chat's ``[DONE]``, the Responses API's ``response.completed``) is held until the
outcome entry is durable. Bytes have reached the client by then, so a failure is an error
event in the API's own shape, never a failover."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import orjson

from sekisho._conversations import echo_as_sent, keeps_conversations, response_id
from sekisho._output import (
    RESPONSE_TERMINAL,
    ResponsesStreamOutput,
    StreamOutput,
    answers_in_json,
)
from sekisho._provider_state import wrap
from sekisho._upstream import (
    choices_problem,
    count,
    joined,
    quote,
    quote_response_error,
    response_event_problem,
)
from sekisho.call import Call, Outcome, TenantView
from sekisho.errors import SekishoError
from sekisho.policy.decision import Decision
from sekisho.providers import UpstreamError, UpstreamProtocolError, UpstreamResponse
from sekisho.providers.h1 import MAX_BODY
from sekisho.routing import Route

if TYPE_CHECKING:
    from sekisho.pipeline import Pipeline

log = logging.getLogger("sekisho.pipeline")

# The most text (characters, as delivered) a stream may carry unless server.max_stream_text_chars
# says less: as much as a whole answer may be (providers/h1.py refuses a larger body). What the
# client was sent is kept for the stream's record, so an endpoint that never ends its stream
# would otherwise fill memory.
MAX_OUTPUT = MAX_BODY


class AnswerTooLarge(UpstreamProtocolError):
    """A stream whose text went past ``server.max_stream_text_chars``: it is ended
    (``upstream_answer_too_large``)."""

    code = "upstream_answer_too_large"


def _too_large(endpoint_id: str, limit: int) -> AnswerTooLarge:
    return AnswerTooLarge(
        endpoint_id,
        f"its answer passed {limit} characters of text, the most a stream may carry "
        "(server.max_stream_text_chars); the rest was not sent",
    )


class StreamEnd:
    """How a stream that has begun ends early, when the gateway's shutdown cuts it: with an
    error in its API's shape, as other failures after the first byte end (chat and
    completions: a ``data:`` line with OpenAI's error object; the Responses API:
    ``_response_failure``)."""

    __slots__ = ("call", "output")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.output: ResponsesStreamOutput | None = None  # set once its relay has begun

    def error(self, exc: SekishoError) -> bytes:
        if self.call.kind == "responses":
            return _response_failure(self.call, self.output, exc.code, exc.message)
        return b"data: " + orjson.dumps(exc.body()) + b"\n\n"


async def relay(
    p: Pipeline,
    call: Call,
    decision: Decision,
    tenant: TenantView,
    route: Route,
    upstream: UpstreamResponse,
    outcome: Outcome,
    end: StreamEnd | None = None,
) -> AsyncIterator[bytes]:
    if call.kind == "responses":
        async for chunk in relay_responses(
            p, call, decision, tenant, route, upstream, outcome, end
        ):
            yield chunk
        return
    outcome.route = route
    ep = route.endpoint
    output = StreamOutput(
        call.pseudonymiser,
        tenant,
        p.scanners[tenant.name],
        legacy=call.kind == "completions",
        json_answer=answers_in_json(call.kind, call.body),
    )
    done = False
    last: dict[str, Any] = {}
    parts: list[bytes] = []  # an event whose data spans several lines, so far
    raw_lines = upstream.lines()
    lines: AsyncIterator[bytes | None] = (
        _marking_silence(raw_lines, p.stream_keepalive) if p.stream_keepalive > 0 else raw_lines
    )
    try:
        async for line in lines:
            if line is None:  # the endpoint has been silent that long: keep the client's
                yield b": keep-alive\n\n"  # connection (and any proxy's idle timer) alive
                continue
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            joined_up = False
            if parts or (payload[:1] == b"{" and payload[-1:] != b"}"):
                whole = joined(parts, payload)  # an event on several data: lines
                if whole is None:
                    continue
                payload, joined_up = whole, True
            if payload == b"[DONE]":
                done = True
                break
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise UpstreamProtocolError(ep.id, "stream event is not JSON") from None
            if joined_up:  # joined from several data: lines: one line for the client
                payload = orjson.dumps(event)
            if not isinstance(event, dict):
                raise UpstreamProtocolError(ep.id, "stream event is not an object")
            error = event.get("error")
            if error:  # the endpoint gave up mid-answer and says why (vLLM, proxies)
                said = error.get("message") if isinstance(error, dict) else error
                told = quote(str(said), p.scanners[tenant.name], p.credentials(ep)) if said else ""
                raise UpstreamProtocolError(ep.id, "stream error event", told)
            usage = event.get("usage")
            if isinstance(usage, dict):
                outcome.prompt_tokens = count(usage.get("prompt_tokens"))
                outcome.completion_tokens = count(usage.get("completion_tokens"))
                if not call.include_usage and not event.get("choices"):
                    continue  # sekisho asked for it (token limits); the client did not
            elif not isinstance(event.get("choices"), list):
                # Not this API's event (inspection reads only choices): never passed on.
                raise UpstreamProtocolError(
                    ep.id, f"stream event without 'choices': not a {call.kind} stream"
                )
            choices = event.get("choices")
            if choices:
                why = (
                    choices_problem(choices, call.kind, "delta", call.spoken)
                    if isinstance(choices, list)
                    else "'choices' that is not a list"
                )
                if why is not None:  # what inspection cannot read is never passed on
                    raise UpstreamProtocolError(ep.id, f"stream event with {why}")
            if output.size > p.max_stream_text:  # an answer that never ends fills no memory
                raise _too_large(ep.id, p.max_stream_text)
            if output.apply(event):
                payload = orjson.dumps(event)
            last = event
            yield b"data: " + payload + b"\n\n"
        if not done:
            raise UpstreamProtocolError(ep.id, "stream ended without [DONE]")
        tail = output.finish()
        if tail is not None:
            yield b"data: " + orjson.dumps(tail) + b"\n\n"
        p.health.success(ep.id)
        outcome.output_texts = output.texts()
        outcome.error_code = output.error_code
        outcome.estimate_usage(call.texts, output.generated_tokens())
        if call.include_usage and outcome.usage_estimated:
            # The client asked for usage and the endpoint sent none: sekisho's estimate, in
            # the chunk the client waits for (the SDKs read usage from the last chunk).
            yield b"data: " + orjson.dumps(_usage_chunk(last, call.kind, outcome)) + b"\n\n"
        try:
            await p.record(call, decision, outcome)
        except SekishoError as exc:
            # Nothing completes without its record: the stream ends with the reason (e.g.
            # ledger_unavailable), never with [DONE].
            yield b"data: " + orjson.dumps(exc.body()) + b"\n\n"
            return
        yield b"data: [DONE]\n\n"
    except UpstreamError as exc:
        # Bytes have reached the client: no failover now. Tell the client in-stream, in the
        # shape the OpenAI SDKs raise as an APIError.
        code = await _broke(p, call, decision, route, outcome, output, exc)
        err = {
            "error": {
                "message": f"The stream from endpoint {ep.id} broke: {exc.told}.",
                "type": "upstream_error",
                "param": None,
                "code": code,
            }
        }
        yield b"data: " + orjson.dumps(err) + b"\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        await _left(p, call, decision, outcome, output)
        raise
    except Exception:
        unexpected = await p.unexpected(call, decision, route)
        yield b"data: " + orjson.dumps(unexpected.body()) + b"\n\n"
    finally:
        upstream.close()


def _usage_chunk(last: dict[str, Any], kind: str, outcome: Outcome) -> dict[str, Any]:
    """A final chunk with no choices and the estimated usage, named like the stream's own."""
    chunk: dict[str, Any] = {
        "id": last.get("id", ""),
        "object": "text_completion" if kind == "completions" else "chat.completion.chunk",
        "created": last.get("created", 0),
        "model": last.get("model", ""),
        "choices": [],
        "usage": {
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        },
    }
    return chunk


async def _broke(
    p: Pipeline,
    call: Call,
    decision: Decision,
    route: Route,
    outcome: Outcome,
    output: StreamOutput,
    exc: UpstreamError,
) -> str:
    """A stream whose endpoint failed after bytes reached the client: the endpoint's
    health hears of it, and the outcome (502, what was delivered, charged what the endpoint
    sent) is recorded. Returns its error code: ``upstream_stream_broken``, or
    ``upstream_answer_too_large``."""
    p.upstream_failed(route, exc)
    code = AnswerTooLarge.code if isinstance(exc, AnswerTooLarge) else "upstream_stream_broken"
    outcome.status = 502
    outcome.error_code = code
    outcome.output_texts = output.texts()
    outcome.estimate_usage(call.texts, output.generated_tokens())
    try:
        await p.record(call, decision, outcome)
    except SekishoError:  # the ledger says why; the client still learns the stream broke
        log.exception("could not record a broken stream", extra={"request_id": call.request_id})
    return code


async def _left(
    p: Pipeline, call: Call, decision: Decision, outcome: Outcome, output: StreamOutput
) -> None:
    """A client gone mid-stream (or a stream the gateway's shutdown cut: ``Pipeline.cut``):
    recorded with what it got, and charged what the endpoint generated until then, including
    the text the output rule was still holding back (shielded: the cancellation must not cut
    the record)."""
    outcome.status, outcome.error_code = p.cut()
    outcome.output_texts = output.texts()
    outcome.estimate_usage(call.texts, output.generated_tokens())  # spent all the same
    await asyncio.shield(p.record(call, decision, outcome))


async def relay_responses(
    p: Pipeline,
    call: Call,
    decision: Decision,
    tenant: TenantView,
    route: Route,
    upstream: UpstreamResponse,
    outcome: Outcome,
    end: StreamEnd | None = None,
) -> AsyncIterator[bytes]:
    """A Responses API stream: typed events, no [DONE]; it ends with response.completed
    (or .incomplete, .failed), which is held until the outcome entry is durable, as chat's
    [DONE] is. The event names are rebuilt from each event's type."""
    outcome.route = route
    ep = route.endpoint
    output = ResponsesStreamOutput(
        call.pseudonymiser,
        tenant,
        p.scanners[tenant.name],
        rename=_renamer(p, call, tenant, ep.id),
        json_answer=answers_in_json(call.kind, call.body),
    )
    if end is not None:
        end.output = output
    terminal: dict[str, Any] | None = None
    parts: list[bytes] = []  # an event whose data spans several lines, so far
    raw_lines = upstream.lines()
    lines: AsyncIterator[bytes | None] = (
        _marking_silence(raw_lines, p.stream_keepalive) if p.stream_keepalive > 0 else raw_lines
    )
    try:
        async for line in lines:
            if line is None:
                yield b": keep-alive\n\n"
                continue
            if not line.startswith(b"data:"):
                continue  # "event:" lines: every event names its type in its data too
            payload = line[5:].strip()
            joined_up = False
            if parts or (payload[:1] == b"{" and payload[-1:] != b"}"):
                whole = joined(parts, payload)  # an event on several data: lines
                if whole is None:
                    continue
                payload, joined_up = whole, True
            if payload == b"[DONE]":  # not in OpenAI's protocol, but some servers add it
                break
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise UpstreamProtocolError(ep.id, "stream event is not JSON") from None
            if joined_up:  # joined from several data: lines: one line for the client
                payload = orjson.dumps(event)
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise UpstreamProtocolError(ep.id, "stream event is not a typed object")
            etype = event["type"]
            why = response_event_problem(event)
            if why is not None:  # what inspection cannot read is never passed on
                raise UpstreamProtocolError(ep.id, f"stream event with {why}")
            if etype in RESPONSE_TERMINAL:
                terminal = event
                break
            if etype in _ECHOING:
                echo_as_sent(event.get("response"), call)  # renamed too: always re-sent
            if etype == "error":  # the provider gave up mid-answer: it says why
                said = quote(str(event.get("message")), p.scanners[tenant.name], p.credentials(ep))
                raise UpstreamProtocolError(ep.id, "stream error event", said)
            if output.size > p.max_stream_text:  # an answer that never ends fills no memory
                raise _too_large(ep.id, p.max_stream_text)
            events = output.apply_event(event)
            if events is None:
                yield b"event: " + etype.encode() + b"\ndata: " + payload + b"\n\n"
            else:
                for e in events:
                    yield _response_event(e)
        if terminal is None:
            raise UpstreamProtocolError(ep.id, "stream ended before the response did")
        response = terminal.get("response")
        quote_response_error(response, p.scanners[tenant.name], p.credentials(ep))
        echo_as_sent(response, call)
        final = output.finish_response(terminal)
        usage = response.get("usage") if isinstance(response, dict) else None
        if isinstance(response, dict) and isinstance(response.get("output"), list):
            outcome.output_items = response["output"]
        if isinstance(usage, dict):
            outcome.prompt_tokens = count(usage.get("input_tokens"))
            outcome.completion_tokens = count(usage.get("output_tokens"))
        for e in final[:-1]:  # text held back to the last
            yield _response_event(e)
        if terminal["type"] == "response.failed":
            outcome.status = 502
            outcome.error_code = "upstream_response_failed"
        else:
            p.health.success(ep.id)
            outcome.error_code = output.error_code
        outcome.output_texts = output.texts()
        outcome.estimate_usage(call.texts, output.generated_tokens())
        try:
            await p.record(call, decision, outcome)
        except SekishoError as exc:
            # Nothing completes without its record: an error event, never response.completed
            yield _response_failure(call, output, exc.code, exc.message)
            return
        yield _response_event(final[-1])
    except UpstreamError as exc:
        code = await _broke(p, call, decision, route, outcome, output, exc)
        told = f"The stream from endpoint {ep.id} broke: {exc.told}."
        yield _response_failure(call, output, code, told)
    except (asyncio.CancelledError, GeneratorExit):
        await _left(p, call, decision, outcome, output)
        raise
    except Exception:
        err = await p.unexpected(call, decision, route)
        yield _response_failure(call, output, err.code, err.message)
    finally:
        upstream.close()


async def relay_when_answered(
    p: Pipeline,
    call: Call,
    decision: Decision,
    tenant: TenantView,
    dispatching: asyncio.Future[tuple[Route, UpstreamResponse, dict[str, Any] | None]],
    outcome: Outcome,
    end: StreamEnd | None = None,
) -> AsyncIterator[bytes]:
    """A stream already started (200) while its endpoint has not sent a first event: SSE
    comments until it does, which clients ignore and idle timers count as traffic. A
    failure now arrives as an error event, in the shape the SDKs raise; where the answer
    came from, which headers can no longer say, arrives as comments."""
    streaming = False
    try:
        while not dispatching.done():
            yield b": keep-alive\n\n"
            await asyncio.wait((dispatching,), timeout=p.stream_keepalive)
        try:
            try:
                route, upstream, _ = dispatching.result()
            except SekishoError:
                raise
            except Exception:
                raise await p.unexpected(call, decision, None) from None
        except SekishoError as exc:
            if not call.outcome_recorded:
                outcome.status, outcome.error_code = exc.status, exc.code
                await p.record(call, decision, outcome)
            if call.kind == "responses":
                yield _response_failure(call, None, exc.code, exc.message)
            else:
                yield b"data: " + orjson.dumps(exc.body()) + b"\n\n"
            return
        info = [f"{k}: {v}" for k, v in route_headers(route)]
        if call.upstream_request_id is not None:
            info.append(f"x-sekisho-upstream-request-id: {call.upstream_request_id}")
        yield "".join(f": {line}\n" for line in info).encode() + b"\n"
        streaming = True
        inner = relay(p, call, decision, tenant, route, upstream, outcome, end)
        try:
            async for chunk in inner:
                yield chunk
        finally:
            # Closed with this one (a client that stopped reading: app.py), not whenever the
            # garbage collector gets to it: its outcome is recorded and its slot freed now.
            await inner.aclose()  # type: ignore[attr-defined]
    finally:
        if not dispatching.done():
            dispatching.cancel()  # the client went away while the endpoint was thinking
            await asyncio.shield(p.gone(call, decision))
        elif not streaming and not dispatching.cancelled() and not dispatching.exception():
            dispatching.result()[1].close()  # answered, but nobody is left to read it


async def _marking_silence(
    lines: AsyncIterator[bytes], interval: float
) -> AsyncIterator[bytes | None]:
    """``lines``, with a None each time ``interval`` seconds pass without one (a pause in the
    middle of a stream: a model thinking between two parts of its answer)."""
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(lines))
            done, _ = await asyncio.wait((pending,), timeout=interval)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                line = finished.result()
            except StopAsyncIteration:
                return
            yield line
    finally:
        if pending is not None:
            pending.cancel()


# Events carrying the whole response at its start (its request's fields echoed).
_ECHOING = frozenset({"response.created", "response.in_progress", "response.queued"})


def _renamer(p: Pipeline, call: Call, tenant: TenantView, endpoint_id: str) -> Callable[[str], str]:
    """How the provider's response id becomes the one the client sees."""
    if keeps_conversations(tenant):
        ours = response_id(call.request_id)
        return lambda _: ours
    return lambda provider_id: wrap(
        provider_id, endpoint_id, p.seal(tenant, endpoint_id, provider_id), call.numbered_so_far()
    )


def route_headers(route: Route) -> list[tuple[str, str]]:
    ep = route.endpoint
    return [
        ("x-sekisho-endpoint", ep.id),
        ("x-sekisho-jurisdiction", ep.jurisdiction.label),
        ("x-sekisho-operator-country", ep.operator.country),
    ]


def _response_event(event: dict[str, Any]) -> bytes:
    """One Responses API server-sent event: its type as the SSE event name, as OpenAI sends."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _response_failure(
    call: Call, output: ResponsesStreamOutput | None, code: str, message: str
) -> bytes:
    """A failure after the stream started, as the Responses API reports one. Once the client
    has the response's ``response.created``: an ``error`` event numbered after the last event
    sent (the SDKs yield it as a ResponseErrorEvent; no response.completed follows). Before
    it (every endpoint failed while the stream was kept alive, or the gateway's shutdown cut
    it then): the response's whole life, ``response.created`` (in_progress)
    then ``response.failed`` carrying the error, under the id sekisho issues for the request.
    OpenAI's streams always begin with response.created, and the SDKs' stream helpers
    (``client.responses.stream``) build every later event onto it: a stream beginning with
    an error event ends in their complaint about the missing event, hiding this error."""
    if output is not None and output.began:
        event = {
            "type": "error",
            "code": code,
            "message": message,
            "param": None,
            "sequence_number": output.next_sequence,
        }
        return _response_event(event)
    seq = output.next_sequence if output is not None else 0
    response: dict[str, Any] = {
        "id": response_id(call.request_id),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": call.body.get("instructions"),
        "metadata": call.body.get("metadata") or {},
        "model": call.model,
        "output": [],
        "parallel_tool_calls": call.body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "temperature": call.body.get("temperature"),
        "tool_choice": call.body.get("tool_choice", "auto"),
        "tools": call.body.get("tools") or [],
        "top_p": call.body.get("top_p"),
        "usage": None,
    }
    echo_as_sent(response, call)  # instructions and metadata as the client sent them
    failed = {
        **response,
        "status": "failed",
        "error": {"code": code, "message": message},
    }
    return _response_event(
        {"type": "response.created", "sequence_number": seq, "response": response}
    ) + _response_event({"type": "response.failed", "sequence_number": seq + 1, "response": failed})
