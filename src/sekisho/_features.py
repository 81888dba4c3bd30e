"""What a request may ask the provider to do beyond answering it: keep it (``store``), search
the web, speak, run hosted tools. Each goes beyond the endpoint's declared data terms, so each
needs the tenant's leave (``tenants.NAME.provider_features``); without it the request is
refused with 400 ``provider_feature_not_allowed`` and nothing is sent."""

from __future__ import annotations

from typing import Any

from sekisho.call import TenantView, asks_for_audio
from sekisho.errors import InvalidRequest


def check_chat_features(body: dict[str, Any], tenant: TenantView) -> None:
    """Refuse a request that asks the provider to keep it or to take it to the web, unless the
    tenant allows that feature: both go beyond the endpoint's declared data terms."""
    allowed = tenant.provider_features
    if body.get("store") is True and "store" not in allowed:
        raise InvalidRequest(
            "This request asks the provider to keep the completion ('store': true). Tenant "
            f"{tenant.name!r} does not allow that: what is kept of a request, and where, is the "
            "tenant's retention policy (its home-region store), not the provider's. An operator "
            f"can allow it with tenants.{tenant.name}.provider_features: [store].",
            param="store",
            code="provider_feature_not_allowed",
        )
    if body.get("web_search_options") is not None and "web_search" not in allowed:
        raise InvalidRequest(
            "This request asks the provider to search the web with words from the prompt "
            f"('web_search_options'). Tenant {tenant.name!r} does not allow that: the search "
            "engine is a third party outside the endpoint's data terms. An operator can allow it "
            f"with tenants.{tenant.name}.provider_features: [web_search].",
            param="web_search_options",
            code="provider_feature_not_allowed",
        )
    modalities = body.get("modalities")
    if asks_for_audio(body) and "audio_output" not in allowed:
        raise InvalidRequest(
            "This request asks for a spoken answer ('modalities': ['audio'] or 'audio'). Tenant "
            f"{tenant.name!r} does not allow that: sekisho cannot inspect audio, so the "
            "tenant's output rule and the re-identification of pseudonyms could not apply to it. "
            f"An operator can allow it with tenants.{tenant.name}.provider_features: "
            "[audio_output].",
            param="modalities" if modalities is not None else "audio",
            code="provider_feature_not_allowed",
        )


# Responses API features that keep data at the provider or hand it to a third party: the tool
# types the provider runs itself, and the feature that allows each. A client-side tool
# (function, custom, local_shell, shell, apply_patch, computer_use) runs in the client's
# application and needs no permission.
_HOSTED_TOOLS = {
    "web_search": "web_search",
    "web_search_preview": "web_search",
    "file_search": "file_search",
    "code_interpreter": "code_interpreter",
    "mcp": "mcp",
    "image_generation": "image_generation",
}
_CLIENT_TOOLS = frozenset(
    {"function", "custom", "local_shell", "shell", "apply_patch", "computer_use_preview"}
)


def check_responses_features(body: dict[str, Any], tenant: TenantView) -> None:
    """Provider-side state and hosted tools in a Responses API request. OpenAI keeps every
    response unless told not to ('store' defaults to true there): without the tenant's leave,
    sekisho tells it not to. State kept at the provider (an earlier response, a conversation,
    a background run, an item reference, a prompt template) needs that leave too, and each
    hosted tool its own."""
    allowed = tenant.provider_features
    if "store" not in allowed:
        stateful = [k for k in ("previous_response_id", "conversation") if body.get(k) is not None]
        if body.get("background") is True:
            stateful.append("background")
        prompt = body.get("prompt")
        if isinstance(prompt, dict) and prompt.get("id") is not None:
            stateful.append("prompt (a prompt template kept at the provider)")
        inp = body.get("input")
        if isinstance(inp, list) and any(
            isinstance(i, dict) and i.get("type") == "item_reference" for i in inp
        ):
            stateful.append("input (item_reference)")
        # ``store: true`` (OpenAI's default, which many clients write out) asks that the
        # response be kept for later: sekisho keeps it, in the tenant's home region as its
        # retention says, and tells the provider not to.
        if stateful:
            raise InvalidRequest(
                f"This request relies on the provider keeping responses ({', '.join(stateful)}). "
                f"Tenant {tenant.name!r} does not allow that: what is kept of a request, and "
                "where, is the tenant's retention policy (its home-region store), not the "
                "provider's. Send the whole conversation as input instead, or an operator can "
                f"allow it with tenants.{tenant.name}.provider_features: [store].",
                param=stateful[0].partition(" ")[0],
                code="provider_feature_not_allowed",
            )
        body["store"] = False  # the Responses API's default is to keep it
    elif body.get("background") is True and body.get("stream") is not True:
        # The answer would be made at the provider and fetched from it later: it would never
        # pass output inspection, nor have an outcome in the ledger. Streamed, it does.
        raise InvalidRequest(
            "A background response that is not streamed would be fetched from the provider "
            "later, past sekisho's output inspection and its ledger. Send it with stream: true "
            "(the answer then comes through sekisho as it is made), or without background.",
            param="background",
            code="provider_feature_not_allowed",
        )
    for i, tool in enumerate(body.get("tools") or ()):
        kind = str(tool.get("type"))
        if kind in _CLIENT_TOOLS:
            continue
        feature = _HOSTED_TOOLS.get(kind) or _HOSTED_TOOLS.get(kind.rsplit("_20", 1)[0])
        if feature is None or feature not in allowed:
            what = f"provider_features: [{feature}]" if feature else "no provider feature"
            raise InvalidRequest(
                f"This request gives the model a tool the provider runs itself "
                f"(tools[{i}].type {kind!r}): words from the prompt would go to it, beyond the "
                f"endpoint's data terms. Tenant {tenant.name!r} does not allow that"
                + (
                    f"; an operator can allow it with tenants.{tenant.name}.{what}."
                    if feature
                    else f" ({what} covers that tool type)."
                ),
                param=f"tools[{i}].type",
                code="provider_feature_not_allowed",
            )
