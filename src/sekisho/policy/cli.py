"""``sekisho policy``: explain a decision, run policy test cases, read the built-in packs.

    sekisho policy explain --config sekisho.yaml --tenant demo --model gpt-4o --text "..."
    sekisho policy test policy-tests.yaml --config sekisho.yaml
    sekisho policy packs [NAME]

The output never shows what was found in the text, only finding types and counts, so it can be
pasted into a ticket or a CI log.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml
from pydantic import ValidationError

from sekisho import _yaml as strict_yaml
from sekisho.errors import ConfigError, ConfigProblem
from sekisho.policy.compiler import CompiledPolicy, LevelExplanation, compile_policy
from sekisho.policy.decision import Decision
from sekisho.policy.packs import available_packs, load_pack, pack_file
from sekisho.policy.spec import PolicyTestCase, PolicyTestFile
from sekisho.types import (
    UNINSPECTED_AUDIO,
    UNINSPECTED_CONTENT,
    UNINSPECTED_FILE,
    UNINSPECTED_IMAGE,
    UNINSPECTED_TOKENS,
    Level,
)

if TYPE_CHECKING:
    from sekisho.config import Config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``policy explain``, ``policy test`` and ``policy packs`` to the main command line."""
    parser = subparsers.add_parser(
        "policy",
        help="explain policy decisions, run policy tests, list packs",
        description="Dry-run a tenant's sovereignty policy and test it in CI.",
    )
    sub = parser.add_subparsers(metavar="ACTION")
    parser.set_defaults(func=lambda _args: _help(parser))

    explain = sub.add_parser(
        "explain",
        help="print the decision for one request as a table",
        description=(
            "Show which endpoints a request may reach under a tenant's policy, and why each "
            "other endpoint may not. The prompt is read from --text or stdin (unless "
            "--classification is given and stdin is a terminal)."
        ),
    )
    explain.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config")
    explain.add_argument("--tenant", required=True, help="tenant name in the config")
    explain.add_argument(
        "--model", default=None, help="requested model name (default: the --body's model)"
    )
    explain.add_argument("--text", default=None, help="prompt text to classify (default: stdin)")
    explain.add_argument(
        "--body",
        default=None,
        metavar="FILE",
        help="a whole request body as the application sends it (chat completions, Responses API, "
        "legacy completions or embeddings JSON; - for stdin): every text the gateway scans is "
        "scanned (tool definitions, names, schemas, instructions…)",
    )
    explain.add_argument(
        "--classification",
        default=None,
        metavar="LEVEL",
        help="declared level, as the x-sekisho-classification header (public … restricted, "
        "機密性1-3)",
    )
    explain.add_argument(
        "--key-models",
        default=None,
        metavar="M1,M2",
        help="the API key's own model allow list, comma-separated",
    )
    explain.add_argument(
        "--attach",
        action="append",
        default=[],
        choices=sorted(ATTACHMENTS),
        help="the request also carries content sekisho cannot read (repeatable): an image, "
        "audio, a file, token ids, or another kind of part",
    )
    explain.add_argument("--json", action="store_true", help="print the decision as JSON")
    explain.set_defaults(func=cmd_explain)

    test = sub.add_parser(
        "test",
        help="run policy test cases from a YAML file; exit 1 on any failure",
        description="Run YAML policy test cases (see docs/policies.md) against a config.",
    )
    test.add_argument("file", metavar="FILE", help="YAML file of test cases")
    test.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config")
    test.set_defaults(func=cmd_test)

    packs = sub.add_parser(
        "packs",
        help="list the built-in packs, or one pack's rules with their sources",
        description="Show the built-in policy packs rule by rule, with obligation and source.",
    )
    packs.add_argument("name", nargs="?", default=None, help="a pack name (default: list all)")
    packs.set_defaults(func=cmd_packs)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``policy`` on its own: ``python -m sekisho.policy.cli explain ...``."""
    parser = argparse.ArgumentParser(prog="sekisho")
    register(parser.add_subparsers(metavar="COMMAND"))
    args = parser.parse_args(["policy", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        _print_problems(exc.problems, sys.stderr)
        return 2


# -- loading -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TenantPolicy:
    name: str
    home_country: str
    policy: CompiledPolicy


def _load(config_file: str) -> Config:
    from sekisho.config import load_config

    return load_config(config_file)


def _tenant_policy(config: Config, name: str) -> _TenantPolicy:
    tenant = config.tenants.get(name)
    if tenant is None:
        known = ", ".join(sorted(config.tenants)) or "none"
        raise ConfigError(
            [ConfigProblem(config.source_file, "tenants", f"no tenant {name!r}; known: {known}")]
        )
    policy = compile_policy(
        tenant.policy,
        config.catalogue,
        home_country=tenant.home_country,
        source=tenant.source_file,
        path=f"tenants.{name}.policy",
        default_classification=tenant.default_classification,
    )
    return _TenantPolicy(name, tenant.home_country, policy)


# --attach KIND: content a request may carry that sekisho cannot read (docs/policies.md)
ATTACHMENTS = {
    "image": UNINSPECTED_IMAGE,
    "audio": UNINSPECTED_AUDIO,
    "file": UNINSPECTED_FILE,
    "tokens": UNINSPECTED_TOKENS,
    "other": UNINSPECTED_CONTENT,
}


class _Reading:
    """The gateway's reading of a request's texts (``Pipeline.inspect``): a text too dense
    with names to read is read for everything else, counts one PERSON, and makes the request
    restricted (``failed``), as the gateway does."""

    def __init__(self, scanner: Any) -> None:
        self.scanner = scanner
        self.failed = False

    def scan(self, text: str) -> list[Any]:
        from sekisho.classify._person import TooManyCues

        try:
            found: list[Any] = self.scanner.scan(text)
        except TooManyCues:
            self.failed = True
            from sekisho.classify.findings import Finding

            rest: list[Any] = self.scanner.without_names().scan(text)
            return [*rest, Finding("PERSON", 0, 1, 1.0)]  # counted, never redacted here
        return found


def _findings(
    config: Config, tenant: str, text: str | None
) -> tuple[dict[str, int], bool, Level | None]:
    """What the gateway's classifier would find for this tenant: its own dictionary, labels and
    threshold included (the default scanner knows none of them); whether it failed; and the
    class a marking in the text names (【機密性3】)."""
    if not text:
        return {}, False, None
    from sekisho.classify import summarise
    from sekisho.classify.redact import marked_level
    from sekisho.config import scanner_for

    reading = _Reading(scanner_for(config.tenants[tenant]))
    found = reading.scan(text)
    return dict(summarise(found)), reading.failed, marked_level(found)


def _body_findings(
    config: Config, tenant: str, path: str
) -> tuple[dict[str, int], str, bool, Level | None]:
    """What the gateway would find in a whole request body, the model it asks for, and
    whether the classifier failed on it."""
    from sekisho.api import schema
    from sekisho.classify import summarise
    from sekisho.classify._seams import across
    from sekisho.classify.redact import marked_level
    from sekisho.config import scanner_for
    from sekisho.errors import InvalidRequest

    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        # Which API the body is for, by its fields, as the path would say: "input" is the
        # Responses API's unless the model is an embedding model or the input a list of
        # texts or token ids (Responses input items are objects).
        body = schema.load_json(raw)
        inp = body.get("input")
        listed = isinstance(inp, list) and bool(inp) and not isinstance(inp[0], dict)
        request: Any
        if "messages" in body or ("input" not in body and "prompt" not in body):
            request = schema.parse_chat(raw)
        elif "prompt" in body:
            request = schema.parse_completions(raw)
        elif listed or config.catalogue.kind(str(body.get("model"))) == "embedding":
            request = schema.parse_embeddings(raw)
        else:
            request = schema.parse_responses(raw)
    except InvalidRequest as exc:
        raise SystemExit(f"sekisho policy explain: {path}: {exc.message}") from None
    from sekisho.classify._person import TooManyCues

    scanner = scanner_for(config.tenants[tenant])
    reading = _Reading(scanner)
    texts, opaque = request.parts()  # what the gateway scans: the texts, then ids and keys
    try:
        crossing, _ = across(scanner.scan, texts)  # and numbers cut across two texts
    except TooManyCues:
        crossing, reading.failed = [], True
    if opaque:
        texts.append("\n\n".join(opaque))
    found = [*(f for text in texts for f in reading.scan(text)), *crossing]
    counts = dict(summarise(found))
    for kind, n in request.uninspected().items():
        counts[kind] = counts.get(kind, 0) + n
    return counts, request.model, reading.failed, marked_level(found)


def _decide(
    config: Config,
    tenant: _TenantPolicy,
    model: str,
    declared: str | None,
    findings: Mapping[str, int],
    key_models: frozenset[str] | None,
    failed: bool = False,
    marked: Level | None = None,
) -> tuple[Decision, LevelExplanation]:
    explained = tenant.policy.explain_level(findings, declared, failed=failed, marked=marked)
    decision = tenant.policy.decide(
        model=model,
        routes=config.catalogue.routes(model),
        level=explained.level,
        finding_counts=findings,
        key_models=key_models,
        level_reason=explained.reason,
    )
    return decision, explained


# -- explain -----------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    config = _load(args.config)
    tenant = _tenant_policy(config, args.tenant)
    if args.body is not None:
        findings, model, failed, marked = _body_findings(config, args.tenant, args.body)
        args.model = args.model or model
    else:
        if args.model is None:
            raise SystemExit("sekisho policy explain: give --model (or --body with a model)")
        text = args.text
        if text is None and not (args.classification is not None and sys.stdin.isatty()):
            text = sys.stdin.read()
        findings, failed, marked = _findings(config, args.tenant, text)
    for kind in args.attach:
        findings[ATTACHMENTS[kind]] = findings.get(ATTACHMENTS[kind], 0) + 1
    key_models = (
        frozenset(m.strip() for m in args.key_models.split(",") if m.strip())
        if args.key_models
        else None
    )
    if not config.catalogue.routes(args.model):
        # The gateway answers this before any policy is asked: say what it answers.
        raise SystemExit(
            f"sekisho policy explain: no endpoint serves model {args.model!r}; the gateway "
            "answers HTTP 404 model_not_found before the policy decides (models served: "
            f"{', '.join(config.catalogue.model_names)})"
        )
    decision, explained = _decide(
        config, tenant, args.model, args.classification, findings, key_models, failed, marked
    )
    if args.json:
        json.dump(_as_json(decision, explained, tenant), out, ensure_ascii=False, indent=2)
        out.write("\n")
    else:
        out.write(render_explanation(config, tenant, decision, explained))
    return 0


def render_explanation(
    config: Config, tenant: _TenantPolicy, decision: Decision, explained: LevelExplanation
) -> str:
    """The decision as a readable report: header, one row per candidate endpoint, rules."""
    lines = [
        f"Tenant          {tenant.name} (home country {tenant.home_country})",
        f"Model           {decision.model}",
        f"Classification  {decision.level.described} — from {explained.source}",
        f"Findings        {_kinds(decision.finding_types) or 'none'}",
        f"Action          {decision.action.value}"
        + (f" (rule {decision.rule})" if decision.rule else ""),
    ]
    if decision.redact_types:
        lines.append(f"Redact          {', '.join(sorted(decision.redact_types))}")
    if decision.pseudonymise_types:
        lines.append(f"Pseudonymise    {', '.join(sorted(decision.pseudonymise_types))}")
    if decision.store_pseudonymised_types:
        stored = ", ".join(sorted(decision.store_pseudonymised_types))
        lines.append(f"Stored as       pseudonyms for {stored}")
    lines += [f"Policy          {decision.policy_digest}", ""]

    rows = [("#", "ENDPOINT", "JURISDICTION", "OPERATOR", "ELIGIBLE", "RULE", "FACT")]
    for rank, route in enumerate(decision.eligible, start=1):
        ep = route.endpoint
        rows.append((str(rank), ep.id, _where(ep), _operator(ep), "yes", "", ""))
    for endpoint_id in dict.fromkeys(e.endpoint_id for e in decision.excluded):
        known = config.catalogue.by_id.get(endpoint_id)
        where = _where(known) if known else "?"
        operator = _operator(known) if known else "?"
        for i, ex in enumerate(decision.exclusions_of(endpoint_id)):
            if i == 0:
                rows.append(("-", endpoint_id, where, operator, "no", ex.rule, ex.fact))
            else:
                rows.append(("", "", "", "", "", ex.rule, ex.fact))
    if len(rows) == 1:
        lines.append(f"No endpoint in the catalogue serves model {decision.model!r}.")
    else:
        lines += _table(rows)

    applied = tenant.policy.applicable_rules(
        decision.level, (k for k, n in decision.finding_types.items() if n > 0)
    )
    lines += ["", "Rules applied to this request:"]
    if not applied:
        lines.append("  none")
    for i in applied:
        rule = tenant.policy.rules[i]
        lines.append(f"  {rule.id}: {rule.title or '(untitled)'}")
        lines.append(
            f"      from {rule.origin}" + (f"; source: {rule.source}" if rule.source else "")
        )
    if decision.denied:
        lines += ["", "Refusal sent to the client (HTTP 403, sovereignty_policy_violation):"]
        lines.append(f"  {decision.refusal_message()}")
    return "\n".join(lines) + "\n"


def _as_json(
    decision: Decision, explained: LevelExplanation, tenant: _TenantPolicy
) -> dict[str, Any]:
    return {
        "tenant": tenant.name,
        "model": decision.model,
        "level": decision.level.label,
        "level_source": explained.source,
        "finding_types": dict(decision.finding_types),
        "action": decision.action.value,
        "rule": decision.rule,
        "eligible": list(decision.eligible_ids),
        "excluded": [
            {"endpoint": e.endpoint_id, "rule": e.rule, "fact": e.fact} for e in decision.excluded
        ],
        "redact_types": sorted(decision.redact_types),
        "pseudonymise_types": sorted(decision.pseudonymise_types),
        "store_pseudonymised_types": sorted(decision.store_pseudonymised_types),
        "policy_digest": decision.policy_digest,
    }


def _kinds(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}×{n}" for k, n in sorted(counts.items()) if n > 0)


def _where(ep: Any) -> str:
    return f"{ep.jurisdiction.country}/{ep.jurisdiction.region}"


def _operator(ep: Any) -> str:
    op = ep.operator
    parent = f", parent {op.parent_country}" if op.parent_country else ""
    return f"{op.name} ({op.country}{parent})"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


# -- test --------------------------------------------------------------------------------------


def cmd_test(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    cases = load_test_file(args.file)
    config = _load(args.config)
    policies: dict[str, _TenantPolicy] = {}
    failures = 0
    for i, case in enumerate(cases.cases):
        if case.tenant not in policies:
            try:
                policies[case.tenant] = _tenant_policy(config, case.tenant)
            except ConfigError as exc:
                out.write(f"FAIL  {case.name}\n")
                for p in exc.problems:
                    out.write(f"      {args.file}: cases[{i}].tenant: {p.reason}\n")
                failures += 1
                continue
        diffs = run_case(config, policies[case.tenant], case)
        out.write(f"{'FAIL' if diffs else 'ok  '}  {case.name}\n")
        for line in diffs:
            out.write(f"      {line}\n")
        failures += bool(diffs)
    total = len(cases.cases)
    out.write(f"\n{total - failures} passed, {failures} failed\n")
    return 1 if failures else 0


def load_test_file(path: str) -> PolicyTestFile:
    """Read a policy test file; raise ``ConfigError`` naming file, key and reason."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = strict_yaml.load(handle)
    except OSError as exc:
        raise ConfigError([ConfigProblem(path, "", f"cannot read: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(path, "", f"not valid YAML: {exc}")]) from None
    try:
        return PolicyTestFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            [
                ConfigProblem(path, ".".join(str(p) for p in err["loc"]), err["msg"])
                for err in exc.errors()
            ]
        ) from None


def run_case(config: Config, tenant: _TenantPolicy, case: PolicyTestCase) -> list[str]:
    """Decide one case; return the differences from what it expects (empty: it passes)."""
    findings, failed, marked = _findings(config, tenant.name, case.text)
    for kind, count in case.findings.items():
        findings[kind] = findings.get(kind, 0) + count
    key_models = frozenset(case.key_models) if case.key_models is not None else None
    decision, _ = _decide(
        config, tenant, case.model, case.classification, findings, key_models, failed, marked
    )
    expect = case.expect
    diffs: list[str] = []
    if expect.eligible is not None and list(decision.eligible_ids) != expect.eligible:
        diffs.append(f"eligible: expected {expect.eligible}")
        diffs.append(f"          got      {list(decision.eligible_ids)}")
        for endpoint_id in expect.eligible:
            for ex in decision.exclusions_of(endpoint_id):
                diffs.append(f"          {endpoint_id} excluded by {ex.rule} ({ex.fact})")
    if expect.action is not None and decision.action.value != expect.action:
        why = f" (rule {decision.rule})" if decision.rule else ""
        diffs.append(f"action: expected {expect.action}, got {decision.action.value}{why}")
    if expect.level is not None and decision.level is not Level.parse(expect.level):
        diffs.append(f"level: expected {expect.level}, got {decision.level.label}")
    for endpoint_id, rule in expect.excluded.items():
        rules = [ex.rule for ex in decision.exclusions_of(endpoint_id)]
        if rule not in rules:
            got = (
                ", ".join(rules)
                if rules
                else "eligible"
                if endpoint_id in decision.eligible_ids
                else "not a candidate"
            )
            diffs.append(f"excluded[{endpoint_id}]: expected rule {rule}, got {got}")
    return diffs


# -- packs -------------------------------------------------------------------------------------


def cmd_packs(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if args.name is None:
        for name in available_packs():
            pack = load_pack(name)
            out.write(f"{name:14} {pack.title}\n")
        return 0
    if args.name not in available_packs():
        raise ConfigError(
            [
                ConfigProblem(
                    "<command line>",
                    "policy packs",
                    f"no pack {args.name!r}; built-in: {', '.join(available_packs())}",
                )
            ]
        )
    pack = load_pack(args.name)
    out.write(f"{pack.name}: {pack.title}\n{pack_file(pack.name)}\n\n{pack.description.strip()}\n")
    for section, part in (("classification", pack.classification), ("storage", pack.storage)):
        if part.obligation:
            out.write(f"\n[{section}]\n  obligation: {part.obligation.strip()}\n")
            out.write(f"  source: {part.source.strip()}\n")
    for rule in pack.rules:
        out.write(f"\n{pack.name}/{rule.id}: {rule.title}\n")
        out.write(f"  obligation: {' '.join(rule.obligation.split())}\n")
        out.write(f"  source: {' '.join(rule.source.split())}\n")
    return 0


def _print_problems(problems: Sequence[ConfigProblem], out: TextIO) -> None:
    out.write(f"sekisho: not valid ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n")
    for p in problems:
        out.write(f"  {p}\n")


if __name__ == "__main__":
    sys.exit(main())
