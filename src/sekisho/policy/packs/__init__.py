"""Built-in policy packs: YAML data files in this folder, one per body of law or guidance.

See docs/policies.md for each pack, rule by rule.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import yaml
from pydantic import ValidationError

from sekisho import _yaml as strict_yaml
from sekisho.errors import ConfigError, ConfigProblem
from sekisho.policy.spec import PackSpec

_PACKAGE = "sekisho.policy.packs"


def pack_file(name: str) -> str:
    """Where a pack's data file lives, for error messages and ``policy explain``."""
    return str(resources.files(_PACKAGE).joinpath(f"{name}.yaml"))


@cache
def available_packs() -> tuple[str, ...]:
    """Names of the built-in packs, sorted."""
    root = resources.files(_PACKAGE)
    return tuple(
        sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))
    )


@cache
def load_pack(name: str) -> PackSpec:
    """Read and validate one built-in pack; raise ``ConfigError`` if it does not validate."""
    if name not in available_packs():
        raise KeyError(name)
    where = pack_file(name)
    text = resources.files(_PACKAGE).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    try:
        data = strict_yaml.load(text)
        pack = PackSpec.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(where, "", f"not valid YAML: {exc}")]) from exc
    except ValidationError as exc:
        raise ConfigError(
            [
                ConfigProblem(where, ".".join(str(p) for p in err["loc"]), err["msg"])
                for err in exc.errors()
            ]
        ) from exc
    if pack.name != name:
        raise ConfigError([ConfigProblem(where, "name", f"is {pack.name!r}, file says {name!r}")])
    return pack
