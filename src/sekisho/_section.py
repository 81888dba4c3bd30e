"""The base of every section of sekisho's configuration: unknown keys refused, values frozen,
and numbers and booleans read strictly.

Pydantic's lax mode takes ``true`` for 1 and 1 for ``true``: ``retention_days: true`` became a
day of retention and ``trains_on_data: 1`` a yes, where YAML most likely read something else
than what was meant (``retention_days: yes``). Here a boolean given for a number, or a number
for a boolean, is refused, as the JSON Schema (``sekisho config schema``) refuses it. Text is
still converted (``"8080"``, ``"true"``): that is what a ``${VAR}`` expands to.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

Kind = Literal["number", "bool"]


class Section(BaseModel):
    # .inf and .nan are no setting: a weight of .inf sent all traffic to one endpoint
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, int | float) or info.field_name is None:
            return value
        field = cls.model_fields.get(info.field_name)
        kind = _kind(field.annotation) if field is not None else None
        if kind == "number" and isinstance(value, bool):
            raise ValueError(
                f"YAML read this as a boolean ({str(value).lower()}); a number is needed here"
            )
        if kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"{value!r} is a number; write true or false")
        return value


def _kind(annotation: Any) -> Kind | None:
    """Whether a field takes a number, a boolean, or something else (None)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kind(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        kinds = {_kind(a) for a in get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if annotation is bool:
        return "bool"
    if annotation is int or annotation is float:
        return "number"
    return None
