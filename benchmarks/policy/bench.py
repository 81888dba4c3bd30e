"""Policy decision time over a 50-endpoint catalogue and a 100-rule policy.

    .venv/bin/python benchmarks/policy/bench.py [--iterations N] [--seed S]

Measures ``CompiledPolicy.decide`` in-process: *cold* clears the memo before every call (the
full evaluation over 50 candidates and 100 rules), *warm* repeats requests whose decision is
memoised (the usual case: few distinct (model, level, finding types) combinations), and
*request* is ``classify`` + ``decide`` on a warm memo, what the pipeline calls per request.
Prints median and p99 in microseconds, the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from sekisho.policy.compiler import CompiledPolicy, compile_policy
from sekisho.policy.packs import load_pack
from sekisho.policy.spec import KNOWN_FINDING_TYPES, PolicySpec
from sekisho.routing.catalogue import Catalogue, Endpoint
from sekisho.types import Level

COUNTRIES = ["JP", "JP", "JP", "US", "DE", "GB", "SG"]
CERTS = ["ISMAP", "ISO27001", "ISO27017", "SOC2", "C5"]
BASES = ["appi:consent", "appi:equivalent_measures", "appi:designated_country", "gdpr:scc"]
PACKS = ["jp-appi", "jp-mynumber", "jp-gov-genai", "eu-gdpr"]


def build_catalogue(rng: random.Random, size: int = 50) -> Catalogue:
    endpoints = []
    for i in range(size):
        retention = rng.choice([0, 0, 7, 30])
        parent = rng.random() < 0.3
        endpoints.append(
            Endpoint.model_validate(
                {
                    "id": f"ep{i:02d}",
                    "family": "openai",
                    "base_url": f"http://127.0.0.1:{9000 + i}/v1",
                    "models": [{"id": "chat", "aliases": ["gpt-4o"]}],
                    "jurisdiction": {"country": rng.choice(COUNTRIES), "region": f"r{i % 3}"},
                    "operator": {
                        "name": f"Operator {i % 12}",
                        "country": rng.choice(COUNTRIES),
                        "parent": f"Group {i % 5}" if parent else None,
                        "parent_country": rng.choice(COUNTRIES) if parent else None,
                    },
                    "data_terms": {
                        "retention_days": retention,
                        "trains_on_data": rng.random() < 0.2,
                        "zero_data_retention": retention == 0 and rng.random() < 0.5,
                        "legal_bases": rng.sample(BASES, rng.randint(0, 2)),
                    },
                    "certifications": rng.sample(CERTS, rng.randint(0, 3)),
                    "deployment": rng.choice(["on_premises", "private_cloud", "public_cloud"]),
                    "confidential_computing": rng.random() < 0.3,
                }
            )
        )
    return Catalogue(endpoints)


def build_policy(rng: random.Random, catalogue: Catalogue, rules: int = 100) -> CompiledPolicy:
    """The four packs (11 rules), four level entries, and tenant rules up to ``rules``."""
    types = sorted(KNOWN_FINDING_TYPES)
    ids = sorted(catalogue.by_id)

    def conditions() -> dict[str, Any]:
        choices: list[dict[str, Any]] = [
            {"jurisdictions": rng.sample(["JP", "US", "DE", "GB", "SG", "JP/r0"], 3)},
            {"max_retention_days": rng.choice([7, 30])},
            {"no_training": True},
            {"certifications_any_of": rng.sample(CERTS, 2)},
            {"deployments": rng.sample(["on_premises", "private_cloud", "public_cloud"], 2)},
            {"endpoints": {"deny": rng.sample(ids, 2)}},
            {"operator_countries": ["JP", "US", "DE", "GB", "SG"]},
            {"foreign_operator": {"bases": rng.sample(BASES, 2)}},
        ]
        return rng.choice(choices)

    spec: dict[str, Any] = {
        "extends": PACKS,
        "levels": {
            "public": {"max_retention_days": 30},
            "internal": {"no_training": True},
            "confidential": {"jurisdictions": ["JP", "DE", "US"]},
            "restricted": {"any_of": [{"deployments": ["on_premises"]}, {"jurisdictions": ["JP"]}]},
        },
        "rules": [],
        "overrides": {
            "jp-mynumber/no-model-endpoint": {
                "reason": "benchmark",
                "endpoints": {"allow": ids[:10]},
            }
        },
        "prefer": {"endpoints": ids[:3], "domestic": True},
    }
    pack_rules = sum(len(load_pack(name).rules) for name in PACKS)
    for i in range(rules - pack_rules - len(spec["levels"])):
        rule: dict[str, Any] = {"id": f"rule-{i:03d}", **conditions()}
        if rng.random() < 0.7:
            rule["when"] = {"findings": rng.sample(types, 2)}
        else:
            rule["when"] = {"levels": [rng.choice(["public", "internal", "confidential"])]}
        spec["rules"].append(rule)
    policy = compile_policy(PolicySpec.model_validate(spec), catalogue, home_country="JP")
    assert len(policy.rules) == rules, len(policy.rules)
    return policy


def measure(call: Callable[[], object], iterations: int) -> tuple[float, float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        start = clock()
        call()
        samples.append(clock() - start)
    samples.sort()
    median = statistics.median(samples) / 1000
    p99 = samples[int(len(samples) * 0.99) - 1] / 1000
    return median, p99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    catalogue = build_catalogue(rng)
    policy = build_policy(rng, catalogue)
    types = sorted(KNOWN_FINDING_TYPES)
    # A realistic mix of requests: mostly nothing found, some personal data, a few My Numbers.
    requests = [
        rng.choice([{}, {}, {}, {"PERSON": 1}, {"EMAIL": 2, "PHONE_JP": 1}, {"MY_NUMBER": 1}])
        | ({rng.choice(types): 1} if rng.random() < 0.3 else {})
        for _ in range(64)
    ]
    declared = [None, None, "confidential", "機密性3", "public"]
    state = {"i": 0}

    def next_request() -> tuple[dict[str, int], Level]:
        state["i"] = (state["i"] + 1) % len(requests)
        findings = requests[state["i"]]
        return findings, policy.classify(findings, declared[state["i"] % len(declared)])

    def decide_cold() -> object:
        findings, level = next_request()
        policy._memo.clear()  # the benchmark's purpose: force a full evaluation
        return policy.decide(
            model="gpt-4o", routes=catalogue.routes("gpt-4o"), level=level, finding_counts=findings
        )

    def decide_warm() -> object:
        findings, level = next_request()
        return policy.decide(
            model="gpt-4o", routes=catalogue.routes("gpt-4o"), level=level, finding_counts=findings
        )

    def classify_and_decide() -> object:
        state["i"] = (state["i"] + 1) % len(requests)
        findings = requests[state["i"]]
        level = policy.classify(findings, declared[state["i"] % len(declared)])
        return policy.decide(
            model="gpt-4o", routes=catalogue.routes("gpt-4o"), level=level, finding_counts=findings
        )

    for call in (decide_cold, decide_warm, classify_and_decide):  # warm up caches and the memo
        measure(call, 2000)
    results = {
        "cold (memo miss)": measure(decide_cold, args.iterations),
        "warm (memoised)": measure(decide_warm, args.iterations),
        "classify + decide": measure(classify_and_decide, args.iterations),
    }
    eligible = [
        len(
            policy.decide(
                model="gpt-4o", routes=catalogue.routes("gpt-4o"), level=lvl, finding_counts={}
            ).eligible
        )
        for lvl in Level
    ]
    print(f"date       {datetime.date.today().isoformat()}")
    print(f"machine    {platform.machine()}, {os.cpu_count()} CPUs, {_cpu_name()}")
    print(f"python     {platform.python_version()} ({sys.implementation.name})")
    print(f"catalogue  {len(catalogue.endpoints)} endpoints, all serving the requested model")
    print(f"policy     {len(policy.rules)} rules ({', '.join(PACKS)} + tenant), {policy.digest}")
    print(f"eligible   {eligible} endpoints at public/internal/confidential/restricted")
    print(f"iterations {args.iterations} per row\n")
    print(f"{'decision':20} {'median µs':>10} {'p99 µs':>10}")
    for name, (median, p99) in results.items():
        print(f"{name:20} {median:10.2f} {p99:10.2f}")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
