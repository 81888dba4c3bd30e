"""Compile a tenant's policy against the catalogue into something that decides in microseconds.

Compiling resolves the packs a tenant extends, applies its overrides, checks every name against
the catalogue and evaluates every rule against every endpoint once. Deciding is then a matter of
bit masks: the rules that apply to a request (by level and by finding type) against the rules each
endpoint fails. Decisions are memoised on everything they depend on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sekisho.errors import ConfigError, ConfigProblem
from sekisho.policy.decision import NO_ELIGIBLE_ENDPOINT, Decision, Exclusion
from sekisho.policy.packs import available_packs, load_pack, pack_file
from sekisho.policy.spec import Constraints, PolicySpec, RuleSpec, TransferCondition, When
from sekisho.routing.catalogue import Catalogue, Endpoint, Route
from sekisho.types import UNINSPECTED_TYPES, Action, Level

# Rule ids of checks that are not written as rules.
TENANT_MODELS_RULE = "tenant/models"
KEY_MODELS_RULE = "key/models"

_MEMO_LIMIT = 8192
_ACTION_STRENGTH = {"allow": 0, "pseudonymise": 1, "redact": 2, "block": 3}

# A check looks at one endpoint and returns the fact that fails it, or None when it passes.
Check = Callable[[Endpoint], str | None]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One resolved rule: where it came from, when it applies and what it requires."""

    id: str
    title: str
    obligation: str
    source: str
    origin: str  # "pack jp-appi", "tenant", or "pack jp-appi, overridden by tenant: <reason>"
    levels: frozenset[Level]
    findings: frozenset[str]
    action: Action | None
    canonical: Mapping[str, Any]

    def applies(self, level: Level, finding_types: Iterable[str]) -> bool:
        return level in self.levels or not self.findings.isdisjoint(finding_types)


@dataclass(frozen=True, slots=True)
class LevelExplanation:
    """A request's level and where it came from, for ``policy explain`` and the ledger."""

    level: Level
    source: str
    # The same, as a refusal says it after the level: "by finding MY_NUMBER (pack jp-mynumber)".
    reason: str = ""


class CompiledPolicy:
    """A tenant's policy, resolved and checked against one catalogue. Immutable; thread-safe."""

    def __init__(
        self,
        *,
        rules: tuple[CompiledRule, ...],
        checks: Mapping[str, Mapping[str, str]],
        home_country: str,
        default_level: Level,
        finding_levels: Mapping[str, tuple[Level, str]],
        finding_actions: Mapping[str, str],
        store_pseudonymise: frozenset[str],
        models: frozenset[str] | None,
        ranks: Mapping[str, tuple[int, int]],
        digest: str,
        canonical: Mapping[str, Any],
    ) -> None:
        self.rules = rules
        self.home_country = home_country
        self.default_level = default_level
        self.finding_levels = dict(finding_levels)
        self.finding_actions = dict(finding_actions)
        self.store_pseudonymise = store_pseudonymise
        self.models = models
        self.digest = digest
        self.canonical = canonical
        self._ranks = dict(ranks)
        self._by_id = {rule.id: rule for rule in rules}
        # Per endpoint: one bit per rule it fails, and the Exclusion each failure would report,
        # built once here so that deciding only picks them by bit.
        self._exclusions: dict[str, dict[int, Exclusion]] = {}
        self._fail_mask: dict[str, int] = {}
        index = {rule.id: i for i, rule in enumerate(rules)}
        for endpoint_id, failed in checks.items():
            self._exclusions[endpoint_id] = {
                index[r]: Exclusion(endpoint_id, r, fact) for r, fact in failed.items()
            }
            self._fail_mask[endpoint_id] = sum(1 << index[r] for r in failed)
        self._action_mask = sum(1 << i for i, rule in enumerate(rules) if rule.action is not None)
        self._level_mask = {
            level: sum(1 << i for i, rule in enumerate(rules) if level in rule.levels)
            for level in Level
        }
        self._finding_mask: dict[str, int] = {}
        for i, rule in enumerate(rules):
            for kind in rule.findings:
                self._finding_mask[kind] = self._finding_mask.get(kind, 0) | (1 << i)
        self._memo: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def preference_rank(self, endpoint_id: str) -> tuple[int, int]:
        """The endpoint's place in the tenant's preference order; equal ranks are equally
        preferred, so the router may spread load among them by weight."""
        return self._ranks.get(endpoint_id, (1 << 30, 1))

    def rule(self, rule_id: str) -> CompiledRule:
        return self._by_id[rule_id]

    # -- classification -------------------------------------------------------------------

    def classify(
        self,
        finding_counts: Mapping[str, int],
        declared: str | None,
        *,
        failed: bool = False,
        marked: Level | None = None,
    ) -> Level:
        """The request's level: the highest of the declared level, the default, the findings
        and the level a document's marking states (``marked``: 【機密性3】).

        Fail closed: a declared value that does not parse, or a classifier that failed, makes the
        request RESTRICTED.
        """
        return self.explain_level(finding_counts, declared, failed=failed, marked=marked).level

    def explain_level(
        self,
        finding_counts: Mapping[str, int],
        declared: str | None,
        *,
        failed: bool = False,
        marked: Level | None = None,
    ) -> LevelExplanation:
        level, source = self.default_level, "default classification"
        reason = "by the tenant's default classification"
        if failed:
            return LevelExplanation(
                Level.RESTRICTED,
                "classifier failed (fail closed)",
                "because the classifier failed (fail closed)",
            )
        stated: Level | None = None
        if declared is not None:
            try:
                stated = Level.parse(declared)
            except ValueError:
                # The value is the client's: it is named, never repeated.
                return LevelExplanation(
                    Level.RESTRICTED,
                    "declared classification not understood (fail closed)",
                    "because the declared classification (x-sekisho-classification) is not a "
                    "level (fail closed; accepted: public, internal, confidential, restricted, "
                    "機密性1, 機密性2, 機密性3, percent-encoded in the header)",
                )
            if stated >= level:
                level = stated
                source = "declared classification (x-sekisho-classification, or --classification)"
                reason = "as declared (x-sekisho-classification)"
        for kind, count in finding_counts.items():
            mapped = self.finding_levels.get(kind)
            if count > 0 and mapped is not None and mapped[0] > level:
                level, source = mapped[0], f"finding {kind} ({mapped[1]})"
                reason = f"by finding {kind} ({mapped[1]})"
        if marked is not None and marked > level:
            # The document names its own class (【機密性3】): never less than that, whatever a
            # pack maps markers in general to.
            level = marked
            alias = marked.government_alias
            source = f"finding CONFIDENTIAL_LABEL (the text is marked {alias})"
            reason = f"by the text's marking {alias} (CONFIDENTIAL_LABEL)"
        if stated is not None and stated < level:
            lower = (
                f"; declared {stated.described}, lower: a client may raise its level, "
                "never lower it"
            )
            source += lower
            reason += lower
        return LevelExplanation(level, source, reason)

    # -- deciding -------------------------------------------------------------------------

    def decide(
        self,
        *,
        model: str,
        routes: Sequence[Route],
        level: Level,
        finding_counts: Mapping[str, int],
        key_models: frozenset[str] | None = None,
        level_reason: str = "",
    ) -> Decision:
        """Which of ``routes`` may see the request, in preference order, and what to do first.

        ``level_reason`` says why the request is at ``level`` (``LevelExplanation.reason``), for
        the refusal message."""
        kinds = frozenset(k for k, n in finding_counts.items() if n > 0)
        candidates = routes if isinstance(routes, tuple) else tuple(routes)
        key = (model, level, kinds, key_models, candidates)
        core = self._memo.get(key)
        if core is None:
            core = self._decide(model, candidates, level, kinds, key_models)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = core
        eligible, action, excluded, redact, pseudonymise, store, rule = core
        return Decision(
            eligible=eligible,
            action=action,
            excluded=excluded,
            level=level,
            policy_digest=self.digest,
            finding_types=dict(finding_counts),
            redact_types=redact,
            pseudonymise_types=pseudonymise,
            rule=rule,
            store_pseudonymised_types=store,
            model=model,
            level_reason=level_reason,
        )

    def applicable_rules(self, level: Level, finding_types: Iterable[str]) -> tuple[int, ...]:
        mask = self._applicable_mask(level, frozenset(finding_types))
        return tuple(i for i in range(len(self.rules)) if mask >> i & 1)

    def _applicable_mask(self, level: Level, kinds: frozenset[str]) -> int:
        mask = self._level_mask[level]
        for kind in kinds:
            mask |= self._finding_mask.get(kind, 0)
        return mask

    def _decide(
        self,
        model: str,
        routes: tuple[Route, ...],
        level: Level,
        kinds: frozenset[str],
        key_models: frozenset[str] | None,
    ) -> tuple[Any, ...]:
        applicable = self._applicable_mask(level, kinds)
        blocking: str | None = None
        strongest = 0
        for i in _bits(applicable & self._action_mask):
            action = self.rules[i].action
            assert action is not None
            if action is Action.BLOCK and blocking is None:
                blocking = self.rules[i].id
            strongest = max(strongest, _ACTION_STRENGTH[action.value])

        redact: set[str] = set()
        pseudonymise: set[str] = set()
        for kind in kinds:
            if kind in _UNREADABLE:  # nothing to rewrite: a rule blocks such content, or not
                continue
            chosen = self.finding_actions.get(kind)
            if chosen is None and strongest == _ACTION_STRENGTH["redact"]:
                chosen = "redact"
            elif chosen is None and strongest == _ACTION_STRENGTH["pseudonymise"]:
                chosen = "pseudonymise"
            if chosen == "redact":
                redact.add(kind)
            elif chosen == "pseudonymise":
                pseudonymise.add(kind)
        store = kinds & self.store_pseudonymise

        eligible: list[tuple[tuple[int, int, int], Route]] = []
        excluded: list[Exclusion] = []
        for position, route in enumerate(routes):
            endpoint_id = route.endpoint.id
            if blocking is not None:
                excluded.append(Exclusion(endpoint_id, blocking, "action=block"))
                continue
            reasons = self._route_exclusions(route, model, applicable, key_models)
            if reasons:
                excluded.extend(reasons)
            else:
                rank = self._ranks.get(endpoint_id, (1 << 30, 1))
                eligible.append(((rank[0], rank[1], position), route))
        eligible.sort(key=lambda pair: pair[0])
        chosen_routes = tuple(route for _, route in eligible)

        if blocking is not None:
            action, blocked_by = Action.BLOCK, blocking
        elif not chosen_routes:
            action, blocked_by = Action.BLOCK, NO_ELIGIBLE_ENDPOINT
        elif redact:
            action, blocked_by = Action.REDACT, None
        elif pseudonymise:
            action, blocked_by = Action.PSEUDONYMISE, None
        else:
            action, blocked_by = Action.ALLOW, None
        return (
            chosen_routes,
            action,
            tuple(excluded),
            frozenset(redact),
            frozenset(pseudonymise),
            store,
            blocked_by,
        )

    def _route_exclusions(
        self, route: Route, model: str, applicable: int, key_models: frozenset[str] | None
    ) -> list[Exclusion]:
        endpoint_id = route.endpoint.id
        reasons: list[Exclusion] = []
        names = (model, *route.model.public_names)
        if self.models is not None and self.models.isdisjoint(names):
            reasons.append(Exclusion(endpoint_id, TENANT_MODELS_RULE, f"model={route.model.id}"))
        if key_models is not None and key_models.isdisjoint(names):
            reasons.append(Exclusion(endpoint_id, KEY_MODELS_RULE, f"model={route.model.id}"))
        failing = self._fail_mask.get(endpoint_id)
        if failing is None:
            # An endpoint the policy was not compiled against: nothing is known of it.
            reasons.append(Exclusion(endpoint_id, "sekisho/unknown-endpoint", "not in catalogue"))
            return reasons
        hit = failing & applicable
        if hit:
            prepared = self._exclusions[endpoint_id]
            reasons.extend(prepared[i] for i in _bits(hit))
        return reasons


def _bits(mask: int) -> Iterator[int]:
    """Indices of the set bits of ``mask``, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


# -- compiling ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Problems:
    source: str
    items: list[ConfigProblem]

    def add(self, path: str, reason: str, file: str | None = None) -> None:
        self.items.append(ConfigProblem(file or self.source, path, reason))


def compile_policy(
    spec: PolicySpec,
    catalogue: Catalogue,
    *,
    home_country: str,
    source: str = "<config>",
    path: str = "",
    default_classification: str | Level | None = None,
) -> CompiledPolicy:
    """Resolve packs and overrides, check names against ``catalogue`` and precompute decisions.

    ``path`` is the key path of the policy in ``source`` (e.g. ``tenants.demo.policy``), used in
    error messages. ``default_classification`` is the tenant's default level; the effective
    default is the highest of it and the policy's own ``classification.default``.
    Raises ``ConfigError`` listing every problem found, each with file, key path and reason.
    """
    problems = _Problems(source, [])
    home = home_country.strip().upper()
    if len(home) != 2 or not home.isalpha():
        problems.add(_sibling(path, "home_country"), f"{home_country!r} is not a country code")

    packs = []
    for i, name in enumerate(spec.extends):
        if name not in available_packs():
            problems.add(
                _join(path, f"extends[{i}]"),
                f"unknown pack {name!r}; built-in packs: {', '.join(available_packs())}",
            )
            continue
        try:
            packs.append(load_pack(name))
        except ConfigError as exc:
            problems.items.extend(exc.problems)

    # (constraints, rule id, title, origin, when, obligation, source, (file, key path))
    rules: list[
        tuple[RuleSpec | Constraints, str, str, str, When | None, str, str, tuple[str, str]]
    ] = []
    used_overrides: set[str] = set()
    for pack in packs:
        for rule in pack.rules:
            rule_id = f"{pack.name}/{rule.id}"
            override = spec.overrides.get(rule_id)
            origin = f"pack {pack.name}"
            constraints: Constraints = rule
            when = rule.when
            if override is not None:
                used_overrides.add(rule_id)
                if override.disabled:
                    continue
                changed = override.model_fields_set - {"reason", "disabled", "when"}
                updates = {name: getattr(override, name) for name in changed}
                constraints = rule.model_copy(update=updates)
                if "when" in override.model_fields_set:
                    when = override.when
                origin += f", overridden by tenant: {override.reason}"
            where = (pack_file(pack.name), f"rules[id={rule.id}]")
            if override is not None:
                where = (source, _join(path, f"overrides.{rule_id}"))
            rules.append(
                (
                    constraints,
                    rule_id,
                    rule.title,
                    origin,
                    when,
                    rule.obligation,
                    rule.source,
                    where,
                )
            )
    for key in spec.overrides:
        if key not in used_overrides:
            pack_name = key.split("/", 1)[0]
            if pack_name not in spec.extends:
                reason = f"overrides a rule of pack {pack_name!r}, which extends does not list"
            else:
                known = ", ".join(f"{pack_name}/{r.id}" for r in load_pack(pack_name).rules)
                reason = f"pack {pack_name!r} has no rule {key!r}; its rules: {known}"
            problems.add(_join(path, f"overrides.{key}"), reason)
    for level_name, constraints in spec.levels.items():
        level = Level.parse(level_name)
        rules.append(
            (
                constraints,
                f"tenant/levels.{level.label}",
                f"tenant rules for {level.label} requests",
                "tenant",
                When(levels=[level.label]),
                "",
                "",
                (source, _join(path, f"levels.{level_name}")),
            )
        )
    for i, tenant_rule in enumerate(spec.rules):
        rules.append(
            (
                tenant_rule,
                f"tenant/{tenant_rule.id}",
                tenant_rule.title,
                "tenant",
                tenant_rule.when,
                tenant_rule.obligation,
                tenant_rule.source,
                (source, _join(path, f"rules[{i}]({tenant_rule.id})")),
            )
        )

    compiled: list[CompiledRule] = []
    check_lists: list[list[tuple[str, Check]]] = []
    for constraints, rule_id, title, origin, when, obligation, rule_source, where in rules:
        file, key_path = where
        levels, findings = _triggers(when, problems, key_path, file)
        checks = _checks(constraints, home, catalogue, problems, key_path, file)
        action = Action(constraints.action) if constraints.action else None
        canonical = {
            "id": rule_id,
            "title": title,
            "obligation": obligation,
            "source": rule_source,
            "origin": origin,
            "levels": sorted(level.label for level in levels),
            "findings": sorted(findings),
            "constraints": constraints.model_dump(
                mode="json",
                exclude={"id", "title", "obligation", "source", "when", "reason", "disabled"},
            ),
        }
        compiled.append(
            CompiledRule(
                id=rule_id,
                title=" ".join(title.split()),
                obligation=" ".join(obligation.split()),
                source=" ".join(rule_source.split()),
                origin=origin,
                levels=levels,
                findings=findings,
                action=action,
                canonical=canonical,
            )
        )
        check_lists.append(checks)

    default_level, finding_levels, finding_actions, store = _classification(
        spec, packs, default_classification, problems, path
    )

    models: frozenset[str] | None = None
    if spec.models is not None:
        known_models = set(catalogue.model_names)
        for i, name in enumerate(spec.models):
            if name not in known_models:
                problems.add(
                    _join(path, f"models[{i}]"),
                    f"no endpoint in the catalogue serves model {name!r}; "
                    f"known: {', '.join(sorted(known_models)) or 'none'}",
                )
        models = frozenset(spec.models)

    ranks: dict[str, tuple[int, int]] = {}
    preferred = spec.prefer.endpoints
    for i, endpoint_id in enumerate(preferred):
        if endpoint_id not in catalogue.by_id:
            problems.add(
                _join(path, f"prefer.endpoints[{i}]"), _unknown_endpoint(endpoint_id, catalogue)
            )
        elif endpoint_id in preferred[:i]:
            problems.add(_join(path, f"prefer.endpoints[{i}]"), f"{endpoint_id!r} is listed twice")
    for endpoint in catalogue.endpoints:
        first = preferred.index(endpoint.id) if endpoint.id in preferred else len(preferred)
        # Domestic as domestic_operator_only means it: data centre, operator and the
        # operator's parent all at home (a Japanese subsidiary of a foreign cloud is not).
        domestic = (
            endpoint.jurisdiction.country == home
            and _operator_countries(endpoint, frozenset({home})) is None
        )
        ranks[endpoint.id] = (first, 0 if (spec.prefer.domestic and domestic) else 1)

    if problems.items:
        raise ConfigError(problems.items)

    failing: dict[str, dict[str, str]] = {}
    for endpoint in catalogue.endpoints:
        failed: dict[str, str] = {}
        for compiled_rule, checks in zip(compiled, check_lists, strict=True):
            facts = [fact for _, check in checks if (fact := check(endpoint)) is not None]
            if facts:
                failed[compiled_rule.id] = "; ".join(facts)
        failing[endpoint.id] = failed

    resolved: dict[str, Any] = {
        "format": 1,
        "home_country": home,
        "extends": list(spec.extends),
        "overrides": {k: v.model_dump(mode="json") for k, v in sorted(spec.overrides.items())},
        "rules": [rule.canonical for rule in compiled],
        "default": default_level.label,
        "finding_levels": {k: v[0].label for k, v in sorted(finding_levels.items())},
        "finding_actions": dict(sorted(finding_actions.items())),
        "store_pseudonymise": sorted(store),
        "models": sorted(models) if models is not None else None,
        "prefer": spec.prefer.model_dump(mode="json"),
        # The facts the rules were checked against: the same policy over an endpoint moved
        # abroad, or given other data terms, decides differently, so its digest differs.
        "catalogue": catalogue.facts_digest,
    }
    text = json.dumps(resolved, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    return CompiledPolicy(
        rules=tuple(compiled),
        checks=failing,
        home_country=home,
        default_level=default_level,
        finding_levels=finding_levels,
        finding_actions=finding_actions,
        store_pseudonymise=store,
        models=models,
        ranks=ranks,
        digest=digest,
        canonical=resolved,
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _sibling(path: str, key: str) -> str:
    """The key path of ``key`` next to the policy (e.g. tenants.demo.home_country)."""
    parent = path.rpartition(".")[0]
    return f"{parent}.{key}" if parent else key


def _triggers(
    when: When | None, problems: _Problems, key_path: str, file: str
) -> tuple[frozenset[Level], frozenset[str]]:
    if when is None:
        return frozenset(Level), frozenset()
    levels = {Level.parse(name) for name in when.levels}
    if when.min_level is not None:
        floor = Level.parse(when.min_level)
        levels |= {level for level in Level if level >= floor}
    if not levels and not when.findings:
        problems.add(
            f"{key_path}.when",
            "applies to nothing: give levels, min_level or findings (or leave 'when' out to "
            "apply the rule to every request)",
            file,
        )
    return frozenset(levels), frozenset(when.findings)


def _unknown_endpoint(endpoint_id: str, catalogue: Catalogue) -> str:
    known = ", ".join(sorted(catalogue.by_id)) or "none"
    return f"no endpoint {endpoint_id!r} in the catalogue; known: {known}"


def _checks(
    c: Constraints,
    home: str,
    catalogue: Catalogue,
    problems: _Problems,
    key_path: str,
    file: str,
) -> list[tuple[str, Check]]:
    """Turn constraints into checks; report names the catalogue does not know."""
    checks: list[tuple[str, Check]] = []

    if c.jurisdictions is not None:
        # A region is a free-form name: one no endpoint has is a typo (JP/tokio) that would
        # quietly allow nothing. A country is checked against ISO 3166 already, and may be
        # listed before any endpoint is in it.
        served = {
            f"{ep.jurisdiction.country}/{ep.jurisdiction.region.lower()}"
            for ep in catalogue.endpoints
        }
        for i, ref in enumerate(c.jurisdictions):
            if "/" in ref and ref not in served:
                problems.add(
                    f"{key_path}.jurisdictions[{i}]",
                    f"no endpoint is in {ref}; jurisdictions in the catalogue: "
                    f"{', '.join(sorted(served)) or 'none'}",
                    file,
                )
        countries = frozenset(j for j in c.jurisdictions if "/" not in j)
        regions = frozenset(tuple(j.split("/", 1)) for j in c.jurisdictions if "/" in j)

        def jurisdiction(ep: Endpoint) -> str | None:
            j = ep.jurisdiction
            if j.country in countries or (j.country, j.region.lower()) in regions:
                return None
            return f"jurisdiction={j.country}/{j.region}"

        checks.append(("jurisdictions", jurisdiction))

    if c.operators is not None:
        known = {ep.operator.name.lower() for ep in catalogue.endpoints} | {
            ep.operator.parent.lower() for ep in catalogue.endpoints if ep.operator.parent
        }
        for which, names in (("allow", c.operators.allow or []), ("deny", c.operators.deny)):
            for i, name in enumerate(names):
                if name.lower() not in known:
                    problems.add(
                        f"{key_path}.operators.{which}[{i}]",
                        f"no endpoint is operated by {name!r} (or has it as parent); operators "
                        f"in the catalogue: {', '.join(sorted(known)) or 'none'}",
                        file,
                    )
        allow = (
            frozenset(n.lower() for n in c.operators.allow)
            if c.operators.allow is not None
            else None
        )
        deny = frozenset(n.lower() for n in c.operators.deny)

        def operators(ep: Endpoint) -> str | None:
            names = {ep.operator.name.lower()}
            if ep.operator.parent:
                names.add(ep.operator.parent.lower())
            if not deny.isdisjoint(names) or (allow is not None and allow.isdisjoint(names)):
                parent = f", operator.parent={ep.operator.parent}" if ep.operator.parent else ""
                return f"operator={ep.operator.name}{parent}"
            return None

        checks.append(("operators", operators))

    if c.operator_countries is not None:
        if c.domestic_operator_only and home not in c.operator_countries:
            problems.add(
                f"{key_path}.operator_countries",
                f"contradicts domestic_operator_only: the home country {home} is not listed, "
                "so no operator could qualify",
                file,
            )
        allowed = frozenset(c.operator_countries)
        checks.append(("operator_countries", lambda ep: _operator_countries(ep, allowed)))

    if c.domestic_operator_only:
        domestic = frozenset({home})
        checks.append(("domestic_operator_only", lambda ep: _operator_countries(ep, domestic)))

    if c.certifications:
        required = tuple(c.certifications)

        def certifications(ep: Endpoint) -> str | None:
            missing = [cert for cert in required if cert not in ep.certifications]
            if missing:
                return (
                    f"certifications=[{', '.join(ep.certifications)}] (needs {', '.join(missing)})"
                )
            return None

        checks.append(("certifications", certifications))

    if c.certifications_any_of:
        choice = frozenset(c.certifications_any_of)

        def certifications_any(ep: Endpoint) -> str | None:
            if choice.isdisjoint(ep.certifications):
                return (
                    f"certifications=[{', '.join(ep.certifications)}] "
                    f"(needs one of {', '.join(sorted(choice))})"
                )
            return None

        checks.append(("certifications_any_of", certifications_any))

    if c.max_retention_days is not None:
        limit = c.max_retention_days

        def retention(ep: Endpoint) -> str | None:
            days = ep.data_terms.retention_days
            return f"data_terms.retention_days={days}" if days > limit else None

        checks.append(("max_retention_days", retention))

    if c.no_training:
        checks.append(
            (
                "no_training",
                lambda ep: (
                    "data_terms.trains_on_data=true" if ep.data_terms.trains_on_data else None
                ),
            )
        )
    if c.zero_data_retention:
        checks.append(
            (
                "zero_data_retention",
                lambda ep: (
                    None
                    if ep.data_terms.zero_data_retention
                    else "data_terms.zero_data_retention=false"
                ),
            )
        )
    if c.confidential_computing:
        checks.append(
            (
                "confidential_computing",
                lambda ep: None if ep.confidential_computing else "confidential_computing=false",
            )
        )
    if c.deployments is not None:
        kinds = frozenset(c.deployments)
        checks.append(
            (
                "deployments",
                lambda ep: None if ep.deployment in kinds else f"deployment={ep.deployment}",
            )
        )
    if c.foreign_data_centre is not None:
        checks.append(
            (
                "foreign_data_centre",
                _transfer(c.foreign_data_centre, home, "jurisdiction.country", _dc_country),
            )
        )
    if c.foreign_operator is not None:
        checks.append(
            (
                "foreign_operator",
                _transfer(c.foreign_operator, home, "operator.country", _operator_country),
            )
        )
    if c.endpoints is not None:
        for which, ids in (("allow", c.endpoints.allow or []), ("deny", c.endpoints.deny)):
            for i, endpoint_id in enumerate(ids):
                if endpoint_id not in catalogue.by_id:
                    problems.add(
                        f"{key_path}.endpoints.{which}[{i}]",
                        _unknown_endpoint(endpoint_id, catalogue),
                        file,
                    )
        allow_ids = frozenset(c.endpoints.allow) if c.endpoints.allow is not None else None
        deny_ids = frozenset(c.endpoints.deny)

        def endpoints(ep: Endpoint) -> str | None:
            if ep.id in deny_ids:
                return f"endpoint.id={ep.id} (denied)"
            if allow_ids is not None and ep.id not in allow_ids:
                return f"endpoint.id={ep.id} (not explicitly allowed)"
            return None

        checks.append(("endpoints", endpoints))
    if c.any_of is not None:
        alternatives = [
            _checks(alt, home, catalogue, problems, f"{key_path}.any_of[{i}]", file)
            for i, alt in enumerate(c.any_of)
        ]

        def any_of(ep: Endpoint) -> str | None:
            failures: list[str] = []
            for alternative in alternatives:
                facts = [fact for _, check in alternative if (fact := check(ep)) is not None]
                if not facts:
                    return None
                failures.append(", ".join(facts))
            return " | ".join(f"({f})" for f in failures)

        checks.append(("any_of", any_of))
    return checks


def _operator_countries(ep: Endpoint, allowed: frozenset[str]) -> str | None:
    op = ep.operator
    if op.country not in allowed:
        return f"operator.country={op.country}"
    if op.parent_country is not None and op.parent_country not in allowed:
        return f"operator.parent_country={op.parent_country}"
    if op.parent and op.parent_country is None:
        # A parent whose country the catalogue does not say is not known to be allowed
        # (fail closed): give operator.parent_country to let it pass.
        return "operator.parent_country=unknown"
    return None


def _dc_country(ep: Endpoint) -> str:
    return ep.jurisdiction.country


def _operator_country(ep: Endpoint) -> str:
    return ep.operator.country


def _transfer(
    condition: TransferCondition, home: str, fact_name: str, country_of: Callable[[Endpoint], str]
) -> Check:
    at_home = frozenset(condition.home) if condition.home is not None else frozenset({home})
    fine = at_home | frozenset(condition.adequate_countries)
    bases = frozenset(condition.bases)

    def transfer(ep: Endpoint) -> str | None:
        country = country_of(ep)
        if country in fine or not bases.isdisjoint(ep.data_terms.legal_bases):
            return None
        recorded = ", ".join(ep.data_terms.legal_bases) or "none"
        return f"{fact_name}={country} (legal bases recorded: {recorded})"

    return transfer


_UNREADABLE = frozenset(UNINSPECTED_TYPES)


def _classification(
    spec: PolicySpec,
    packs: Sequence[Any],
    tenant_default: str | Level | None,
    problems: _Problems,
    path: str,
) -> tuple[Level, dict[str, tuple[Level, str]], dict[str, str], frozenset[str]]:
    """Merge finding levels, finding actions, defaults and storage rules of packs and tenant.

    Packs merge by strength (higher level, redact over pseudonymise); the tenant's own entries
    then replace the packs' for the types they name.
    """
    levels: dict[str, tuple[Level, str]] = {}
    actions: dict[str, str] = {}
    store: set[str] = set()
    defaults: list[Level] = []
    for pack in packs:
        c = pack.classification
        if c.default is not None:
            defaults.append(Level.parse(c.default))
        for kind, name in c.findings.items():
            level = Level.parse(name)
            if kind not in levels or level > levels[kind][0]:
                levels[kind] = (level, f"pack {pack.name}")
        for kind, action in c.actions.items():
            if _ACTION_STRENGTH[action] > _ACTION_STRENGTH.get(actions.get(kind, "allow"), 0):
                actions[kind] = action
        store |= set(pack.storage.pseudonymise)
    for kind in UNINSPECTED_TYPES:  # fail closed: what cannot be read may hold personal data
        levels.setdefault(kind, (Level.CONFIDENTIAL, "built in: sekisho cannot inspect it"))
    own = spec.classification
    for kind, name in own.findings.items():
        levels[kind] = (Level.parse(name), "tenant")
    actions.update(own.actions)
    store |= set(spec.storage.pseudonymise)
    if own.default is not None:
        defaults = [Level.parse(own.default)]
    if tenant_default is not None:
        if isinstance(tenant_default, Level):
            defaults.append(tenant_default)
        else:
            try:
                defaults.append(Level.parse(tenant_default))
            except ValueError as exc:
                problems.add(_sibling(path, "default_classification"), str(exc))
    default = max(defaults) if defaults else Level.INTERNAL
    return default, levels, actions, frozenset(store)
