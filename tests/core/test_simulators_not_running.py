"""A config whose endpoints are sekisho's simulators, served while none runs (`sekisho serve
--config examples/sekisho.yaml` without `sekisho simulate`): the 502 says what to start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from harness import refuse_connections, start_example


@pytest.mark.parametrize(
    ("case", "hint"),
    [("simulators, none running", True), ("real endpoints", False), ("one answers 503", False)],
)
def test_every_endpoint_unreachable_names_sekisho_simulate_only_for_simulators(
    tmp_path: Path, case: str, hint: bool
) -> None:
    def mark(raw: dict[str, Any]) -> None:
        for ep in raw["endpoints"]:
            ep["simulated"] = case != "real endpoints"

    h = start_example(tmp_path, mark)
    try:
        for endpoint_id in list(h.sims):
            if case == "one answers 503" and endpoint_id == "sim-domestic-tokyo":
                h.fault(endpoint_id, mode="status", status=503)
            else:
                refuse_connections(h, endpoint_id)
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0, timeout=30)
        with pytest.raises(openai.APIStatusError) as failed:
            c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        assert failed.value.status_code == 502
        message = failed.value.response.json()["error"]["message"]
        assert message.startswith("Every eligible endpoint failed (tried: ")
        assert ("`sekisho simulate`" in message) is hint, message
    finally:
        h.stop()
