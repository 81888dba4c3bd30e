"""Retention and key-provider configuration: what is kept, per level, and where keys live."""

from __future__ import annotations

from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sekisho.store import RetentionSpec, VaultKeysSpec, key_provider_of, retention_of
from sekisho.store.identifiers import IdentifierError, normalise
from sekisho.store.spec import LocalKeysSpec
from sekisho.types import Level


def test_level_overrides_take_the_tenants_values_where_unset() -> None:
    spec = RetentionSpec.model_validate(
        {
            "mode": "full",
            "days": 7,
            "levels": {"restricted": {"mode": "none"}, "internal": {"days": 30}},
        }
    )
    assert spec.for_level(Level.RESTRICTED).mode == "none"
    internal = spec.for_level(Level.INTERNAL)
    assert (internal.mode, internal.days) == ("full", 30)
    public = spec.for_level(Level.PUBLIC)
    assert (public.mode, public.days) == ("full", 7)


def test_japanese_level_aliases_are_accepted() -> None:
    spec = RetentionSpec.model_validate(
        {"levels": {"機密性3": {"mode": "none"}, "機密性2": {"days": 3}}}
    )
    assert spec.for_level(Level.RESTRICTED).mode == "none"
    assert spec.for_level(Level.CONFIDENTIAL).days == 3


def test_two_spellings_of_one_level_are_refused() -> None:
    with pytest.raises(ValidationError, match="both mean restricted"):
        RetentionSpec.model_validate({"levels": {"restricted": {}, "機密性3": {}}})


def test_unknown_level_names_the_accepted_spellings() -> None:
    with pytest.raises(ValidationError, match=r"accepted: .*機密性1"):
        RetentionSpec.model_validate({"levels": {"secret": {"mode": "none"}}})


@pytest.mark.parametrize("bad", [{"mode": "everything"}, {"days": 0}, {"dayz": 3}])
def test_bad_retention_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RetentionSpec.model_validate(bad)


def test_every_field_is_described_for_the_json_schema() -> None:
    for model in (RetentionSpec, VaultKeysSpec, LocalKeysSpec):
        props = model.model_json_schema()["properties"]
        assert all("description" in p for p in props.values()), model


def test_defaults_keep_metadata_only_and_local_keys() -> None:
    class Bare:
        pass

    assert retention_of(Bare()).mode == "metadata"
    assert isinstance(key_provider_of(Bare()), LocalKeysSpec)


def test_vault_spec_parses_from_yaml_mapping_and_hides_its_token() -> None:
    class Region:
        keys: ClassVar[dict[str, str]] = {
            "type": "vault",
            "address": "http://127.0.0.1:8200",
            "key_name": "jp-kek",
            "token": "s.secret",
        }

    spec = key_provider_of(Region())
    assert isinstance(spec, VaultKeysSpec) and spec.mount == "transit"
    assert "s.secret" not in repr(spec)


def test_phone_numbers_in_any_written_form_are_one_identifier() -> None:
    forms = [
        "090-1234-5678",
        "０９０－１２３４－５６７８",
        "+81 90 1234 5678",
        "+81 (0)90-1234-5678",
        "09012345678",
    ]
    assert {normalise("PHONE_JP", f) for f in forms} == {"09012345678"}


def test_emails_and_names_ignore_width_case_and_spacing() -> None:
    assert normalise("EMAIL", "Ａ@Ｂ．ｊｐ") == normalise("EMAIL", "a@b.jp")
    assert normalise("PERSON", "山田　太郎") == normalise("PERSON", "山田太郎")
    assert normalise("MY_NUMBER", "1234 5678 9018") == "123456789018"


def test_a_value_with_nothing_identifying_is_refused() -> None:
    with pytest.raises(IdentifierError):
        normalise("PHONE_JP", "--")
    with pytest.raises(IdentifierError):
        normalise("email", "a@b.jp")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="0123456789０１２３４５６７８９-－ ", min_size=1, max_size=20))
def test_digit_identifiers_normalise_to_their_ascii_digits(value: str) -> None:
    digits = "".join(
        str("0123456789０１２３４５６７８９".index(c) % 10) for c in value if c not in "-－ "
    )
    if not digits:
        with pytest.raises(IdentifierError):
            normalise("MY_NUMBER", value)
    else:
        assert normalise("MY_NUMBER", value) == digits


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=30))
def test_normalising_twice_changes_nothing(value: str) -> None:
    for kind in ("EMAIL", "PERSON", "PHONE_JP", "PASSPORT_JP"):
        try:
            once = normalise(kind, value)
        except IdentifierError:
            continue
        assert normalise(kind, once) == once
