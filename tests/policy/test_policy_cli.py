"""``sekisho policy explain``, ``policy test`` and ``policy packs``: what an officer sees."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from docs_examples import write_example

from harness import example_config
from sekisho.errors import ConfigError
from sekisho.policy.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().out


@pytest.fixture
def config(tmp_path: Path) -> str:
    return str(write_example("config", tmp_path))


def test_explain_prints_each_candidate_with_the_rule_and_fact_that_excluded_it(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["explain", "--config", config, "--tenant", "kasumigaseki", "--model", "gpt-4o"]
    code, out = _run([*args, "--classification", "機密性3", "--text", ""], capsys)
    assert code == 0
    assert "Classification  restricted (機密性3) — from declared classification (x-sekisho" in out
    rows = {
        line.split()[1]: line
        for line in out.splitlines()
        if line.split() and (line.split()[0].isdigit() or line.split()[0] == "-")
    }
    assert rows["onprem-vllm"].startswith("1 ")
    assert rows["tokyo-gpu"].startswith("2 ")
    assert "jp-gov-genai/kimitsu3-on-premises-or-domestic" in rows["global-japaneast"]
    assert "operator.parent_country=US" in rows["global-japaneast"]
    assert "sha256:" in out


@pytest.mark.parametrize(
    ("tenant", "text", "level"),
    [
        # jp-gov-genai maps a confidentiality marker to 機密性2; a marker naming 機密性3 states
        # more than that, and was counted as 機密性2 (reaching a cloud 機密性3 may not).
        ("kasumigaseki", "【機密性3】 閣議前の資料を要約して", "restricted (機密性3)"),
        ("kasumigaseki", "機密性３情報 閣議前の資料を要約して", "restricted (機密性3)"),
        ("kasumigaseki", "【機密性2】 会議の議事録を要約して", "confidential (機密性2)"),
        # a tenant whose policy maps no marker still takes a stated class
        ("demo", "【機密性3】 閣議前の資料を要約して", "restricted (機密性3)"),
    ],
)
def test_a_text_marked_with_a_government_class_is_at_least_that_class(
    config: str, capsys: pytest.CaptureFixture[str], tenant: str, text: str, level: str
) -> None:
    argv = ["explain", "--config", config, "--tenant", tenant, "--model", "gpt-4o"]
    code, out = _run([*argv, "--text", text], capsys)
    assert code == 0
    [line] = [x for x in out.splitlines() if x.startswith("Classification")]
    assert line.startswith(f"Classification  {level} — from "), line
    if "3" in level:
        assert "from finding CONFIDENTIAL_LABEL (the text is marked 機密性3)" in line
        rows = {x.split()[1]: x for x in out.splitlines() if x.split() and x.split()[0] == "-"}
        if tenant == "kasumigaseki":
            assert "jp-gov-genai/kimitsu3-on-premises-or-domestic" in rows["global-japaneast"]


def test_explain_classifies_text_and_never_prints_the_values_found(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    my_number = "１２３４５６７８９０１８"
    argv = ["explain", "--config", config, "--tenant", "demo", "--model", "gpt-4o"]
    code, out = _run([*argv, "--text", f"マイナンバーは{my_number}です"], capsys)
    assert code == 0
    assert "MY_NUMBER×1" in out and "from finding MY_NUMBER (pack jp-mynumber)" in out
    assert my_number not in out and "123456789018" not in out
    assert "Stored as       pseudonyms for MY_NUMBER" in out


def test_explain_of_a_text_too_dense_with_names_agrees_with_the_gateway(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It stopped with a TooManyCues traceback where the gateway fails closed: restricted,
    with everything else in the text still found."""
    argv = ["explain", "--config", config, "--tenant", "demo", "--model", "gpt-4o"]
    code, out = _run([*argv, "--text", "マイナンバー 123456789018 " + "田中様、" * 20_500], capsys)
    assert code == 0
    assert "restricted (機密性3) — from classifier failed (fail closed)" in out
    assert "MY_NUMBER×1" in out and "PERSON×1" in out


def test_explain_json_lists_the_refusal_reasons(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["explain", "--config", config, "--tenant", "berlin", "--model", "qwen2.5-72b"]
    argv += ["--classification", "public", "--text", "", "--json", "--key-models", "x,y"]
    code, out = _run(argv, capsys)
    assert code == 0
    decision = json.loads(out)
    assert decision["eligible"] == []
    assert decision["action"] == "block"
    assert decision["rule"] == "sekisho/no-eligible-endpoint"
    assert decision["excluded"] == [
        {"endpoint": "onprem-vllm", "rule": "key/models", "fact": "model=qwen2.5-72b"}
    ]


def test_policy_test_exits_non_zero_and_shows_the_difference_on_failure(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "cases:\n"
        "  - name: my number goes to the US\n"
        "    tenant: demo\n"
        "    model: gpt-4o\n"
        "    findings: {MY_NUMBER: 1}\n"
        "    expect: {eligible: [global-useast], action: allow}\n"
        "  - name: public data is allowed\n"
        "    tenant: demo\n"
        "    model: gpt-4o\n"
        "    classification: public\n"
        "    expect: {action: allow}\n",
        encoding="utf-8",
    )
    code, out = _run(["test", str(cases), "--config", config], capsys)
    assert code == 1
    assert "FAIL  my number goes to the US" in out
    assert "expected ['global-useast']" in out and "got      ['onprem-vllm']" in out
    assert "global-useast excluded by jp-appi/foreign-operator" not in out  # has a basis
    assert "global-useast excluded by jp-mynumber/no-model-endpoint" in out
    assert "action: expected allow, got block" not in out
    assert "ok    public data is allowed" in out
    assert "1 passed, 1 failed" in out


def test_policy_test_rejects_a_malformed_test_file_naming_the_key(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("cases:\n  - name: x\n    tenant: demo\n    model: m\n    expect: {}\n")
    code = main(["test", str(cases), "--config", config])
    assert code == 2
    assert "cases.0.expect" in capsys.readouterr().err


def test_policy_test_reports_an_unknown_tenant_as_a_failure(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "cases:\n  - {name: x, tenant: nobody, model: gpt-4o, expect: {action: allow}}\n"
    )
    code, out = _run(["test", str(cases), "--config", config], capsys)
    assert code == 1
    assert "no tenant 'nobody'" in out


def test_packs_prints_each_rule_with_its_source(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["packs", "jp-appi"], capsys)
    assert code == 0
    assert "jp-appi/foreign-operator:" in out
    assert "source: APPI Art. 28(1)" in out
    code, listing = _run(["packs"], capsys)
    assert code == 0 and listing.count("\n") == 4


def test_unknown_pack_name_is_an_error_listing_the_packs() -> None:
    with pytest.raises(ConfigError, match="jp-appi"):
        from sekisho.policy.cli import cmd_packs

        cmd_packs(__import__("argparse").Namespace(name="jp-apii"), io.StringIO())


def test_explain_classifies_with_the_tenants_own_dictionary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = example_config()  # tenant demo lists "Project Hayabusa" as a project code name
    raw["tenants"]["demo"]["policy"]["classification"] = {"findings": {"CUSTOM": "restricted"}}
    path = tmp_path / "sekisho.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    argv = ["explain", "--config", str(path), "--tenant", "demo", "--model", "gpt-4o"]
    code, out = _run([*argv, "--text", "Project Hayabusa の予算"], capsys)
    assert code == 0
    assert "CUSTOM×1" in out and "Classification  restricted" in out  # as the gateway decides


def test_explain_with_an_attachment_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sekisho.yaml"
    path.write_text(yaml.safe_dump(example_config(), allow_unicode=True), encoding="utf-8")
    argv = ["explain", "--config", str(path), "--tenant", "demo", "--model", "gpt-4o"]
    code, out = _run([*argv, "--text", "この請求書を要約して", "--attach", "image"], capsys)
    assert code == 0
    assert "UNINSPECTED_IMAGE×1" in out
    assert "Classification  confidential (機密性2) — from finding UNINSPECTED_IMAGE" in out


def test_explain_a_whole_request_body_scans_what_the_gateway_scans(
    config: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The body as the application sends it: a My Number only in a tool's schema counts, and
    the model comes from the body."""
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "name": "clerk", "content": "Look the customer up"}],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {
                        "type": "object",
                        "properties": {"id": {"type": "string", "default": "123456789018"}},
                    },
                },
            }
        ],
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(body))
    argv = ["explain", "--config", config, "--tenant", "demo", "--body", str(path)]
    code, out = _run(argv, capsys)
    assert code == 0
    assert "Model           gpt-4o" in out
    assert "MY_NUMBER×1" in out and "Classification  restricted" in out
    assert "123456789018" not in out
    path.write_text('{"model": "gpt-4o", "messages": "not a list"}')
    with pytest.raises(SystemExit, match="Invalid type for 'messages'"):
        main(argv)


@pytest.mark.parametrize(
    ("body", "found"),
    [
        # the Responses API: a My Number only in the instructions
        (
            {
                "model": "gpt-4o",
                "instructions": "顧客のマイナンバーは 1234 5678 9018",
                "input": "hi",
            },
            "MY_NUMBER×1",
        ),
        # legacy completions: an e-mail address only in the suffix
        ({"model": "gpt-4o", "prompt": "def f():", "suffix": "# taro@example.co.jp"}, "EMAIL×1"),
        # embeddings: the input of an embedding model
        ({"model": "text-embedding-3-small", "input": ["taro@example.co.jp"]}, "EMAIL×1"),
        # a key the client chose (scanned, never rewritten), as the gateway scans it
        (
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "hi"}],
                "metadata": {"マイナンバー 1234 5678 9018": "x"},
            },
            "MY_NUMBER×1",
        ),
    ],
)
def test_explain_reads_a_body_of_each_api(
    config: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    body: dict[str, Any],
    found: str,
) -> None:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(body, ensure_ascii=False))
    if body["model"] == "text-embedding-3-small":  # served by the example config, not this one
        config = str(tmp_path / "example.yaml")
        Path(config).write_text(yaml.safe_dump(example_config(), allow_unicode=True))
    argv = ["explain", "--config", config, "--tenant", "demo", "--body", str(path)]
    code, out = _run(argv, capsys)
    assert code == 0
    assert found in out


def test_explain_of_a_model_the_gateway_would_not_find_says_404_not_403(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Explain printed a policy refusal (403) for a model no endpoint serves, where the gateway
    answers 404 model_not_found before any policy is asked."""
    argv = ["explain", "--config", config, "--tenant", "demo", "--text", "hi"]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--model", "gpt-5-typo"])
    assert "404 model_not_found" in str(stop.value) and "gpt-5-typo" in str(stop.value)
