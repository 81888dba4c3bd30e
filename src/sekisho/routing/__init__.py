"""Endpoint catalogue, health and selection. Selection only ever orders what it is given: the
eligible set comes from the policy's decision, and nothing here can add to it."""

from sekisho.routing.catalogue import (
    Catalogue,
    DataTerms,
    Endpoint,
    Jurisdiction,
    ModelEntry,
    Operator,
    Route,
)
from sekisho.routing.health import Health
from sekisho.routing.selector import Selector

__all__ = [
    "Catalogue",
    "DataTerms",
    "Endpoint",
    "Health",
    "Jurisdiction",
    "ModelEntry",
    "Operator",
    "Route",
    "Selector",
]
