"""Key-encryption keys (KEKs): one per region, behind one small interface.

A provider wraps and unwraps tenants' data keys; it never sees a record. Two providers:

- ``LocalKeyFile``: a JSON key file per region under the data dir, created on first start with
  mode 0600 and refused if group or others can read it. Fine for one machine and for trying
  sekisho; every start logs a warning that production should use a KMS.
- ``VaultTransit``: HashiCorp Vault's Transit engine (``encrypt``, ``decrypt``,
  ``keys/:name/rotate``). The KEK never leaves Vault; data keys are unwrapped here to be used,
  and re-wrapped here on rotation (decrypt, then encrypt under the newest version): Vault's
  ``rewrap`` takes no ``associated_data``, so it cannot re-wrap a key bound to its context.

Calls are blocking (file or HTTP); async callers run them in a thread. Wrapped keys are strings
``<prefix>:v<version>:<base64>`` so rotation can tell which KEK version wrapped them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import ssl
import stat
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sekisho.store.errors import KeyFileMissing, KeyProviderError
from sekisho.store.spec import LocalKeysSpec, VaultKeysSpec

log = logging.getLogger("sekisho.store.keys")

KEY_FILE_FORMAT = "sekisho-region-kek/1"


class KeyProvider(Protocol):
    """Wraps tenants' data keys under the region's KEK. ``context`` is bound as associated data."""

    description: str
    # Versions can only be retired from the oldest up (Vault's min_decryption_version).
    retires_oldest_first: bool

    def wrap(self, plaintext: bytes, context: bytes) -> str: ...

    def unwrap(self, wrapped: str, context: bytes) -> bytes:
        """Raise ``InvalidTag`` if the KEK does not open it (wrong key, altered, other context)."""
        ...

    def rewrap(self, wrapped: str, context: bytes) -> str:
        """The same data key wrapped under the newest KEK version, bound to the same context.
        Raises ``InvalidTag`` as ``unwrap`` does."""
        ...

    def rotate(self) -> int:
        """Make a new KEK version current; return its number. Old versions still unwrap."""
        ...

    def versions(self) -> tuple[int, list[int]]:
        """The current KEK version, and every version that still unwraps (ascending)."""
        ...

    def retire(self, version: int) -> None:
        """Delete a KEK version that is not current: what it wrapped never unwraps again.
        The caller makes sure nothing it wrapped is still in use (``RegionStore.retire_kek``)."""
        ...

    def close(self) -> None: ...


def version_of(wrapped: str) -> int:
    """The KEK version that wrapped a key (``vault:v3:...`` → 3)."""
    try:
        return int(wrapped.split(":", 2)[1].removeprefix("v"))
    except (IndexError, ValueError):
        raise ValueError(f"not a wrapped key: {wrapped[:16]!r}...") from None


def default_key_path(data_dir: Path, region: str) -> Path:
    return data_dir / "keys" / f"region-{region}.kek"


def open_key_provider(
    spec: LocalKeysSpec | VaultKeysSpec, region: str, data_dir: Path, *, create: bool = True
) -> KeyProvider:
    if isinstance(spec, VaultKeysSpec):
        return VaultTransit(spec, region)
    path = Path(spec.path) if spec.path else default_key_path(data_dir, region)
    return LocalKeyFile.open(path, region, create=create)


# -- local key file --------------------------------------------------------------------------------


class LocalKeyFile:
    """A region's KEK versions in a 0600 JSON file. Not a KMS: see the module docstring."""

    PREFIX = "sekisho"
    retires_oldest_first = False

    def __init__(self, path: Path, region: str, current: int, keys: dict[int, bytes]) -> None:
        self.path = path
        self.region = region
        self.description = f"local key file {path}"
        self._current = current
        self._keys = keys
        self._lock = threading.Lock()
        self._seen = _identity(path)  # the file as last read or written

    @classmethod
    def open(cls, path: Path, region: str, *, create: bool = True) -> LocalKeyFile:
        if not path.exists():
            if not create:
                raise KeyFileMissing(
                    f"Region {region!r} has no key file at {path}. It is created on the first "
                    "start of the gateway; restore it from your key backup if it was lost.",
                    str(path),
                )
            try:
                cls._create(path, region)
            except OSError as exc:
                raise KeyProviderError(
                    f"Cannot create the key file {path} of region {region!r}: {exc.strerror}"
                ) from None
            log.warning(
                "created key-encryption key for region %s at %s (mode 0600); back it up apart "
                "from the store, and use a KMS such as Vault Transit in production",
                region,
                path,
            )
        provider = cls._load(path, region)
        log.warning(
            "region %s encrypts its data keys with a local key file (%s); production should "
            "use a KMS (regions.%s.keys: {type: vault, ...})",
            region,
            path,
            region,
        )
        return provider

    @staticmethod
    def _create(path: Path, region: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = _key_file_body(region, 1, {1: secrets.token_bytes(32)})
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # another process created it first: use theirs
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def _load(cls, path: Path, region: str) -> LocalKeyFile:
        try:
            st = path.stat()
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyProviderError(
                    f"Key file {path} of region {region!r} is readable by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); a key-encryption key must be private. "
                    f"Run: chmod 600 {path}"
                )
            raw = json.loads(path.read_bytes())
        except OSError as exc:
            raise KeyProviderError(f"Cannot read key file {path}: {exc.strerror}") from None
        except ValueError:
            raise KeyProviderError(
                f"Key file {path} is not valid JSON; restore it from backup"
            ) from None
        try:
            if raw["format"] != KEY_FILE_FORMAT:
                raise ValueError(f"format {raw['format']!r}")
            keys = {int(v): base64.b64decode(k, validate=True) for v, k in raw["keys"].items()}
            current = int(raw["current"])
            owner = str(raw["region"])
            if current not in keys or any(len(k) != 32 for k in keys.values()):
                raise ValueError("keys must be 32 bytes and include the current version")
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyProviderError(
                f"Key file {path} is damaged ({exc}); restore it from backup"
            ) from None
        if owner != region:
            raise KeyProviderError(
                f"Key file {path} belongs to region {owner!r}, not {region!r}: keys of a region "
                "stay with that region. Point regions.{region}.keys.path at the region's own file."
            )
        return cls(path, region, current, keys)

    def _follow(self) -> None:
        """Take up the file as another process left it (``keys rotate`` or ``kek-retire`` run
        while this gateway serves): new data keys are then wrapped under the version made
        current, and data keys re-wrapped under it open. Call with the lock held."""
        now = _identity(self.path)
        if now is None or now == self._seen:
            return
        fresh = self._load(self.path, self.region)
        self._keys, self._current, self._seen = fresh._keys, fresh._current, now
        log.info("key file %s re-read: current KEK version %d", self.path, self._current)

    def wrap(self, plaintext: bytes, context: bytes) -> str:
        with self._lock:
            self._follow()  # a new data key is rare: one stat() each time is nothing
            version, key = self._current, self._keys[self._current]
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(key).encrypt(nonce, plaintext, context)
        return f"{self.PREFIX}:v{version}:" + base64.b64encode(nonce + sealed).decode()

    def unwrap(self, wrapped: str, context: bytes) -> bytes:
        version = version_of(wrapped)
        with self._lock:
            self._follow()  # unwrapping is rare too (a generation not yet in memory)
            key = self._keys.get(version)
        if key is None:
            raise KeyProviderError(
                f"Key version {version} is not in {self.path} (it has "
                f"{sorted(self._keys)}): the data key was wrapped by another key file"
            )
        blob = base64.b64decode(wrapped.split(":", 2)[2])
        return AESGCM(key).decrypt(blob[:12], blob[12:], context)

    def rewrap(self, wrapped: str, context: bytes) -> str:
        return self.wrap(self.unwrap(wrapped, context), context)

    def rotate(self) -> int:
        with self._lock:
            keys = dict(self._keys)
            current = max(keys) + 1
            keys[current] = secrets.token_bytes(32)
            self._replace(current, keys)
        return current

    def versions(self) -> tuple[int, list[int]]:
        with self._lock:
            self._follow()
            return self._current, sorted(self._keys)

    def retire(self, version: int) -> None:
        with self._lock:
            if version == self._current or version not in self._keys:
                raise KeyProviderError(
                    f"Key version {version} of {self.path} cannot be retired: "
                    + ("it is the current one" if version in self._keys else "it is not there")
                )
            keys = {v: k for v, k in self._keys.items() if v != version}
            self._replace(self._current, keys)

    def _replace(self, current: int, keys: dict[int, bytes]) -> None:
        """The key file rewritten whole (a new file, fsynced, renamed over it); then in use."""
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_key_file_body(self.region, current, keys))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self._keys, self._current, self._seen = keys, current, _identity(self.path)

    def close(self) -> None:
        self._keys = {}


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What tells one version of a file from the next (it is replaced whole, by rename)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _key_file_body(region: str, current: int, keys: dict[int, bytes]) -> bytes:
    return json.dumps(
        {
            "format": KEY_FILE_FORMAT,
            "region": region,
            "current": current,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "keys": {str(v): base64.b64encode(k).decode() for v, k in sorted(keys.items())},
        },
        indent=1,
    ).encode()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- HashiCorp Vault Transit -----------------------------------------------------------------------


class VaultTransit:
    """The region's KEK as a Vault Transit key. Uses the documented HTTP API only."""

    retires_oldest_first = True

    def __init__(self, spec: VaultKeysSpec, region: str) -> None:
        self.spec = spec
        self.region = region
        base = spec.address.rstrip("/")
        self._base = f"{base}/v1/{spec.mount}"
        self.description = f"Vault Transit key {spec.mount}/{spec.key_name} at {base}"
        self._tls: ssl.SSLContext | None = None
        if spec.ca_file is not None:
            # An internal CA: trusted for Vault only, instead of the system's trust store.
            try:
                self._tls = ssl.create_default_context(cafile=spec.ca_file)
            except (OSError, ssl.SSLError, ValueError) as exc:
                why = getattr(exc, "strerror", None) or exc
                raise KeyProviderError(
                    f"regions.{region}.keys.ca_file: cannot load CA certificates from "
                    f"{spec.ca_file}: {why}"
                ) from None
            if not self._tls.get_ca_certs():
                raise KeyProviderError(
                    f"regions.{region}.keys.ca_file: {spec.ca_file} holds no CA certificate"
                )

    def _call(
        self, op: str, path: str, body: dict[str, Any] | None, method: str = "POST"
    ) -> dict[str, Any]:
        url = f"{self._base}/{path}"
        headers = {"X-Vault-Token": self.spec.token, "Content-Type": "application/json"}
        if self.spec.namespace:
            headers["X-Vault-Namespace"] = self.spec.namespace
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(
                request, timeout=self.spec.timeout_seconds, context=self._tls
            ) as resp:
                text = resp.read()
        except urllib.error.HTTPError as exc:
            # Vault's words; a token it (or a proxy before it) quotes is masked: this goes
            # to the log, /readyz and the terminal
            detail = _vault_errors(exc.read()).replace(self.spec.token, "[SECRET]")
            if op == "decrypt" and exc.code == 400 and "authentication failed" in detail.lower():
                raise InvalidTag() from None
            if exc.code in (401, 403):
                hint = (
                    f" Check the token and its policy (it needs {op} on {self.spec.mount}/{path})."
                )
            elif exc.code == 404:
                hint = f" Check the mount ({self.spec.mount}) and the key name."
            else:
                hint = ""
            raise KeyProviderError(
                f"{self.description} refused {op} for region {self.region!r}: HTTP {exc.code}"
                f"{': ' + detail if detail else ''}.{hint}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise KeyProviderError(
                f"Cannot reach {self.description} for region {self.region!r}: {reason}"
            ) from None
        if not text:
            return {}
        try:
            parsed = json.loads(text)
        except ValueError:
            raise KeyProviderError(
                f"{self.description} answered {op} with a non-JSON body"
            ) from None
        return parsed if isinstance(parsed, dict) else {}

    def _data(self, op: str, reply: dict[str, Any], key: str) -> str:
        value = (reply.get("data") or {}).get(key)
        if not isinstance(value, str):
            raise KeyProviderError(f"{self.description} answered {op} without data.{key}")
        return value

    def wrap(self, plaintext: bytes, context: bytes) -> str:
        reply = self._call(
            "encrypt",
            f"encrypt/{self.spec.key_name}",
            {"plaintext": _b64(plaintext), "associated_data": _b64(context)},
        )
        return self._data("encrypt", reply, "ciphertext")

    def unwrap(self, wrapped: str, context: bytes) -> bytes:
        reply = self._call(
            "decrypt",
            f"decrypt/{self.spec.key_name}",
            {"ciphertext": wrapped, "associated_data": _b64(context)},
        )
        return base64.b64decode(self._data("decrypt", reply, "plaintext"))

    def rewrap(self, wrapped: str, context: bytes) -> str:
        # Not Vault's rewrap endpoint: it has no associated_data parameter (only context,
        # for derived keys), so every data key bound to (region, tenant, generation) would
        # fail authentication there. Decrypt and encrypt again, both with the binding.
        return self.wrap(self.unwrap(wrapped, context), context)

    def rotate(self) -> int:
        reply = self._call("rotate", f"keys/{self.spec.key_name}/rotate", None)
        latest = (reply.get("data") or {}).get("latest_version")
        if isinstance(latest, int):
            return latest
        # Older Vaults answer 204 with no body: the version shows on the next encryption.
        return version_of(self.wrap(b"\0" * 32, b"sekisho-rotation-probe"))

    def versions(self) -> tuple[int, list[int]]:
        reply = self._call("read", f"keys/{self.spec.key_name}", None, method="GET")
        data = reply.get("data") or {}
        try:
            current = int(data["latest_version"])
            lowest = int(data.get("min_decryption_version") or 1)
            held = sorted(v for v in map(int, data["keys"]) if v >= lowest)
        except (KeyError, TypeError, ValueError):
            raise KeyProviderError(
                f"{self.description} answered read without data.keys and data.latest_version"
            ) from None
        return current, held

    def retire(self, version: int) -> None:
        # Vault retires versions oldest first: min_decryption_version, then trim deletes them.
        current, held = self.versions()
        if version == current or version not in held or version != held[0]:
            why = (
                "it is the current one"
                if version == current
                else "it does not unwrap any more"
                if version not in held
                else f"Vault retires versions oldest first; retire version {held[0]} first"
            )
            raise KeyProviderError(f"Key version {version} of {self.description} cannot be "
                                   f"retired: {why}")  # fmt: skip
        name = self.spec.key_name
        self._call("config", f"keys/{name}/config", {"min_decryption_version": version + 1})
        self._call("trim", f"keys/{name}/trim", {"min_available_version": version + 1})

    def close(self) -> None:
        return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _vault_errors(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors")
    except (ValueError, AttributeError):
        return ""
    return "; ".join(str(e) for e in errors) if isinstance(errors, list) else ""
