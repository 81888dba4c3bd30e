"""examples/prometheus/: the alerting and recording rules an operator loads as they are.

Every metric and label their expressions name must be one a running gateway serves on /metrics:
a metric renamed in metrics.py, or a label dropped, fails here instead of leaving an alert that
can never fire. Each alert has its runbook in docs/operations.md, where its runbook_url points.
(`promtool check rules` checks the PromQL itself; this suite does not need Prometheus.)
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness import Harness, request, start_example
from sekisho.metrics import MULTIPROC_ENV, Metrics

ROOT = Path(__file__).resolve().parent.parent.parent
ALERTS = ROOT / "examples" / "prometheus" / "sekisho-alerts.yaml"
RECORDING = ROOT / "examples" / "prometheus" / "sekisho-recording-rules.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"

# Labels Prometheus gives every series it scrapes, and the series of the scrape itself.
TARGET_LABELS = frozenset({"job", "instance"})
SCRAPE_SERIES = {"up": TARGET_LABELS}
# Metrics whose series only an event a test cannot cheaply cause makes (a failing ledger or
# store, a running backup, a TLS certificate, an endpoint at its cap): their labels are read
# from the gateway's registry instead of from a series.
WITHOUT_SERIES_HERE = frozenset(
    {
        "sekisho_ledger_refusals",
        "sekisho_store_refusals",
        "sekisho_store_erasure_incomplete",
        "sekisho_tls_certificate_expiry_timestamp_seconds",
        "sekisho_endpoint_busy",
        "sekisho_classifier_failures",
        "sekisho_reloads",
    }
)
SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"^(\d+(ms|[smhdwy]))+$")


# -- PromQL, as far as these rules need it ---------------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
    | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){},])
    """,
    re.X,
)
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                 "count_values", "bottomk", "topk", "quantile"}  # fmt: skip
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_MATCH = {"=", "!=", "=~", "!~"}


@dataclass
class Expression:
    """What one PromQL expression reads: its selectors (metric, {label: (op, value)}), the
    labels it groups or matches on, and those label_replace makes and reads."""

    selectors: list[tuple[str, dict[str, tuple[str, str]]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    made: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        assert m is not None, f"cannot read PromQL at {expr[pos : pos + 30]!r} in {expr!r}"
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def scan(expr: str) -> Expression:
    toks = tokens(expr)
    found = Expression()
    depth = 0
    for _, text in toks:
        depth += text in ("(", "{")
        depth -= text in (")", "}")
        assert depth >= 0, f"unbalanced {expr!r}"
    assert depth == 0, f"unbalanced {expr!r}"
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        after = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind != "name" or text in _KEYWORDS or text in _AGGREGATIONS:
            i += 1
        elif text in _GROUPING:
            i += 1
            if after == "(":
                i += 1
                while toks[i][1] != ")":
                    if toks[i][0] == "name":
                        found.grouping.add(toks[i][1])
                    i += 1
        elif after == "(":  # a function
            if text == "label_replace":
                strings = _call_strings(toks, i + 1)
                found.made.add(strings[0])
                found.read.add(strings[2])
            i += 1
        else:  # a metric, and its matchers
            matchers: dict[str, tuple[str, str]] = {}
            i += 1
            if after == "{":
                i += 1
                while toks[i][1] != "}":
                    if toks[i][0] == "name" and toks[i + 1][1] in _MATCH:
                        matchers[toks[i][1]] = (toks[i + 1][1], toks[i + 2][1][1:-1])
                        i += 3
                    else:
                        i += 1
            found.selectors.append((text, matchers))
    return found


def _call_strings(toks: list[tuple[str, str]], opening: int) -> list[str]:
    """The string arguments of the call whose "(" is at ``opening`` (not those nested)."""
    depth = 0
    strings: list[str] = []
    for kind, text in toks[opening:]:
        if text in ("(", "{"):
            depth += 1
        elif text in (")", "}"):
            depth -= 1
            if depth == 0:
                break
        elif kind == "string" and depth == 1:
            strings.append(text[1:-1])
    return strings


def test_the_promql_reader_finds_metrics_labels_and_groupings() -> None:
    """The reader the checks below rely on: if it missed a metric, they would pass vacuously."""
    found = scan(
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{route=~"chat|x"}[5m])))'
        " / on (job) group_left max without (pid) (b) > 3 * sum(rate(c[6h] offset 10m))"
        ' and absent(up{job="sekisho"}) or label_replace(d{e!="-"}, "country", "$1", "f", "(..)")'
    )
    assert [m for m, _ in found.selectors] == ["a_bucket", "b", "c", "up", "d"]
    assert found.selectors[0][1] == {"route": ("=~", "chat|x")}
    assert found.selectors[4][1] == {"e": ("!=", "-")}
    assert found.grouping == {"job", "le", "pid"}
    assert (found.made, found.read) == ({"country"}, {"f"})


# -- what a running gateway serves --------------------------------------------------------------


@dataclass
class Served:
    """The gateway's /metrics: each series name and the labels its series carry."""

    labels: dict[str, set[str]]
    values: dict[str, dict[str, set[str]]]  # series name -> label -> values seen
    family: dict[str, str]  # series name -> its metric family
    bare: set[str]  # families without a series: labels as the registry declares them


_SERIES_OF = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def declared_labels(h: Harness) -> dict[str, set[str]]:
    """Each metric family's label names as the gateway's registry declares them: what a series
    of it will carry, for those that have none yet. (prometheus_client exposes no public way
    to read them off a collector.)"""
    out: dict[str, set[str]] = {}
    registry = h.gateway.metrics.registry
    for collector in list(registry._collector_to_names):
        names = getattr(collector, "_labelnames", None)
        if names is not None:
            for family in collector.describe():
                out[family.name] = set(names)
    return out


def served(h: Harness, tmp: Path) -> Served:
    text = request("GET", f"{h.root}/metrics").text + only_some_deployments(tmp)
    declared = declared_labels(h)
    labels: dict[str, set[str]] = {}
    values: dict[str, dict[str, set[str]]] = {}
    of: dict[str, str] = {}
    bare: set[str] = set()
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("sekisho_"):
            continue
        if not family.samples:
            bare.add(family.name)
        for suffix in _SERIES_OF[family.type]:
            name = family.name + suffix
            of[name] = family.name
            samples = [s for s in family.samples if s.name == name]
            for s in samples:
                labels.setdefault(name, set()).update(s.labels)
                for k, v in s.labels.items():
                    values.setdefault(name, {}).setdefault(k, set()).add(v)
            if not family.samples:
                extra = {"le"} if suffix == "_bucket" else set()
                labels[name] = declared[family.name] | extra
    return Served(labels, values, of, bare)


def only_some_deployments(tmp: Path) -> str:
    """Series a gateway serves only when so configured, from the same code: sekisho_redis_up
    (with ``redis:``), and the --workers supervisor's counts (what the worker answering a
    scrape serves with ``PROMETHEUS_MULTIPROC_DIR`` set)."""
    with_redis = Metrics()
    with_redis.watch_redis()
    keep = {"sekisho_redis_up"}
    text = generate_latest(with_redis.registry).decode()
    old = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = str(tmp)
    try:
        text += Metrics().exposition().decode()
        keep.add("sekisho_worker_deaths")
    finally:
        if old is None:
            del os.environ[MULTIPROC_ENV]
        else:
            os.environ[MULTIPROC_ENV] = old
    out = []
    for block in re.split(r"(?m)^(?=# HELP )", text):
        if any(block.startswith((f"# HELP {name} ", f"# HELP {name}_total ")) for name in keep):
            out.append(block)
    assert len(out) == len(keep), out
    return "".join(out)


@pytest.fixture(scope="module")
def gateway_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The example config's gateway after traffic that makes a series of nearly every metric:
    answers, a stream, embeddings, findings, a policy refusal, a failing endpoint, a rate
    limit hit, a client head too large."""

    def limited(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["limits"]["per_key"] = {"requests_per_minute": 2}

    h = start_example(tmp_path_factory.mktemp("alerts"), limited)
    try:
        drive(h)
        yield served(h, tmp_path_factory.mktemp("workers-metrics"))
    finally:
        h.stop()


def drive(h: Harness) -> None:
    def ask(key: str, path: str, body: dict[str, Any]) -> int:
        r = request("POST", f"{h.base_url}/{path}", json_body=body,
                    headers={"authorization": f"Bearer {key}"})  # fmt: skip
        return int(r.status_code)

    def chat(content: str, model: str = "gpt-4o", **kw: Any) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": content}], **kw}

    one, two, three, four, five = (h.key() for _ in range(5))  # each at most 2 a minute
    assert ask(one, "chat/completions", chat("こんにちは")) == 200
    assert ask(one, "chat/completions", chat("ストリームで", stream=True)) == 200
    assert ask(two, "chat/completions", chat("マイナンバーは123456789018です")) == 200
    assert ask(two, "chat/completions", chat("AWS key AKIAZ7QXEMPLKRT2W4VB")) == 200  # SECRET
    # A My Number may go to the domestic endpoint only; gpt-4.1 is served in the US alone.
    assert ask(five, "chat/completions", chat("番号は123456789018", model="gpt-4.1")) == 403
    assert ask(three, "embeddings", {"model": "text-embedding-3-small", "input": "埋め込み"}) == 200
    h.fault("sim-global-useast", mode="status", status=500)  # the only endpoint of gpt-4.1
    assert ask(three, "chat/completions", chat("hello", model="gpt-4.1")) == 502
    for expected in (200, 200, 429):  # the key's own requests_per_minute
        assert ask(four, "chat/completions", chat("hello")) == expected
    with socket.create_connection(("127.0.0.1", h.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Padding: " + b"a" * 70_000)
        assert s.recv(64).startswith(b"HTTP/1.1 431 ")


# -- the rules ------------------------------------------------------------------------------------


def rules(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and set(doc) == {"groups"}, f"{path.name}: only groups"
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"}, group.keys()
        assert group["name"] not in names, f"group {group['name']} twice"
        names.add(group["name"])
        assert group["rules"], f"group {group['name']} has no rules"
        out.extend(group["rules"])
    return out


ALERT_RULES = rules(ALERTS)
RECORDING_RULES = rules(RECORDING)


def rule_id(rule: dict[str, Any]) -> str:
    return str(rule.get("alert") or rule.get("record"))


def test_every_alert_has_what_alertmanager_and_the_on_call_need() -> None:
    seen: set[str] = set()
    for rule in ALERT_RULES:
        name = rule["alert"]
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, name
        assert re.fullmatch(r"Sekisho[A-Z][A-Za-z0-9]+", name), name
        assert name not in seen, f"{name} twice"
        seen.add(name)
        assert DURATION.match(rule["for"]), (name, rule["for"])
        assert rule["labels"]["severity"] in SEVERITIES, name
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        assert notes["summary"].strip() and notes["description"].strip(), name
        assert notes["runbook_url"].startswith("docs/operations.md#"), name


def test_every_recording_rule_is_named_level_metric_operations() -> None:
    seen: set[str] = set()
    for rule in RECORDING_RULES:
        assert set(rule) == {"record", "expr"}, rule
        assert re.fullmatch(r"[a-z_]+:sekisho_[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule
        assert rule["record"] not in seen
        seen.add(rule["record"])


def headings(text: str) -> dict[str, str]:
    """Each heading's GitHub anchor, and the heading."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^#{1,6} (.+)$", line)
        if m:
            out[re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")] = m.group(1)
    return out


def test_every_alert_has_its_runbook_in_the_operations_guide() -> None:
    doc = OPERATIONS.read_text(encoding="utf-8")
    section = doc.split("\n## Alerting (アラート・監視)\n", 1)[1].split("\n## ", 1)[0]
    anchors = headings(doc)
    in_section = headings(section)
    for rule in ALERT_RULES:
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in in_section, f"{rule['alert']}: no heading #{anchor} under Alerting"
        assert anchor in anchors
        assert rule["alert"] in in_section[anchor], f"{rule['alert']} not named in its heading"
    named = {n for h in in_section.values() for n in re.findall(r"Sekisho\w+", h)}
    assert named == {rule["alert"] for rule in ALERT_RULES}, "runbooks for alerts not shipped"


@pytest.mark.parametrize("rule", ALERT_RULES + RECORDING_RULES, ids=rule_id)
def test_every_metric_and_label_a_rule_reads_is_served(
    rule: dict[str, Any], gateway_metrics: Served
) -> None:
    found = scan(rule["expr"])
    assert found.selectors, f"{rule_id(rule)} reads no metric"
    known = {**gateway_metrics.labels, **SCRAPE_SERIES}
    available: set[str] = set(TARGET_LABELS)
    for metric, matchers in found.selectors:
        assert metric in known, f"{rule_id(rule)}: /metrics serves no {metric}"
        family = gateway_metrics.family.get(metric, metric)
        assert family not in gateway_metrics.bare or family in WITHOUT_SERIES_HERE, (
            f"{metric} has no series after the traffic this test sends: its labels are unseen"
        )
        for label in matchers:
            assert label in known[metric] | TARGET_LABELS, (
                f"{rule_id(rule)}: {metric} has no label {label} (it has {sorted(known[metric])})"
            )
        available |= known[metric]
    assert found.read <= available, f"{rule_id(rule)}: label_replace reads {found.read}"
    missing = found.grouping - available - found.made
    assert not missing, f"{rule_id(rule)}: groups by {missing}, which no metric it reads has"


def test_the_finding_types_the_alerts_watch_are_the_ones_the_gateway_counts(
    gateway_metrics: Served,
) -> None:
    """A type misspelt in a matcher (MYNUMBER) would match nothing, silently."""
    counted = gateway_metrics.values["sekisho_findings_total"]["type"]
    for rule in ALERT_RULES:
        for metric, matchers in scan(rule["expr"]).selectors:
            if metric == "sekisho_findings_total" and "type" in matchers:
                op, value = matchers["type"]
                assert op == "=~" and set(value.split("|")) <= counted, (rule["alert"], counted)


# -- the metrics table of the operations guide --------------------------------------------------


def metrics_table() -> list[tuple[list[str], set[str], list[str]]]:
    """Each row of operations.md's metrics table: the metrics it names, the labels it gives
    them (what its second cell says before its first colon, parenthesised values aside;
    `none` for a metric without labels) and all its cells."""
    doc = OPERATIONS.read_text(encoding="utf-8")
    table = doc.split("\n| metric | labels |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        names = re.findall(r"`(sekisho_\w+)`", cells[0])
        said = re.sub(r"\([^()]*\)", "", cells[1] if len(cells) > 1 else "").split(":", 1)[0]
        labels = {w.strip(" `") for w in said.split(",")} - {"", "none"}
        rows.append((names, labels, cells))
    return rows


def test_every_row_of_the_metrics_table_has_a_metric_cell_and_a_labels_cell() -> None:
    """A row with a third cell renders without it (GitHub drops the cells past the header's):
    what sekisho_redis_up and sekisho_open_files mean was written there and never shown."""
    for names, _, cells in metrics_table():
        assert names, cells
        assert len(cells) == 2, f"{names}: {len(cells)} cells, the table has 2"
        assert cells[1], f"{names}: say `none` and what it counts"


def test_the_metrics_table_lists_every_metric_served_with_its_labels(
    gateway_metrics: Served,
) -> None:
    served_labels: dict[str, set[str]] = {}
    for series, family in gateway_metrics.family.items():
        # prometheus_client's text format writes each counter's and histogram's creation
        # time as a gauge of its own (sekisho_requests_created): part of its metric.
        if series in gateway_metrics.labels and not family.endswith("_created"):
            served_labels.setdefault(family, set()).update(gateway_metrics.labels[series] - {"le"})
    documented: dict[str, set[str]] = {}
    for names, labels, _ in metrics_table():
        for name in names:
            documented[name.removesuffix("_total")] = labels
    assert set(documented) == set(served_labels), (
        f"served, not in the table: {sorted(set(served_labels) - set(documented))}; "
        f"in the table, not served: {sorted(set(documented) - set(served_labels))}"
    )
    for family, labels in served_labels.items():
        assert documented[family] == labels, (family, documented[family], labels)


def test_every_metric_the_docs_name_is_served(gateway_metrics: Served) -> None:
    """An operator copies a metric from a runbook or a troubleshooting row into a query: one
    renamed or never served would match nothing, silently."""
    served = set(gateway_metrics.labels) | set(gateway_metrics.family.values())
    not_metrics = {"sekisho_store_version"}  # the stores' migration table (storage.md)
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        named = set(re.findall(r"(?<![\w:])sekisho_[a-z_]*[a-z]", doc.read_text(encoding="utf-8")))
        unknown = named - served - not_metrics
        assert not unknown, f"{doc.name} names {sorted(unknown)}, which /metrics does not serve"
