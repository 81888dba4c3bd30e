"""Adapters to upstream API families. Each is a transport behind one small interface.

Nothing above this package knows which family answered: the pipeline hands a Route and an
OpenAI-shaped body to ``Transport.open`` and gets back an ``UpstreamResponse``.
"""

from sekisho.providers.base import (
    Transport,
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamKeyFileError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from sekisho.providers.openai import AzureOpenAITransport, OpenAITransport, transport_for

__all__ = [
    "AzureOpenAITransport",
    "OpenAITransport",
    "Transport",
    "UpstreamConnectError",
    "UpstreamConnectTimeoutError",
    "UpstreamError",
    "UpstreamKeyFileError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "transport_for",
]
