"""An upstream key kept in a file (``api_key_file``): a secret mounted by Kubernetes, Vault
Agent or systemd credentials, rotated by replacing the file. Read at start and on every reload,
so a rotated key needs no restart; the key never has to be in the config or the environment.
(Its mode is not checked: Kubernetes mounts secrets 0644 unless told otherwise; prefer 0400.)"""

from __future__ import annotations


class KeyFileUnusable(Exception):
    """The key file cannot be used; the message says why (never the key)."""


def read_key_file(path: str) -> str:
    """The key in ``path``: its content without surrounding whitespace, one line."""
    try:
        with open(path, encoding="utf-8") as f:
            key = f.read(16384).strip()
    except OSError as exc:
        raise KeyFileUnusable(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise KeyFileUnusable(f"{path} is not text") from None
    if not key:
        raise KeyFileUnusable(f"{path} is empty")
    if "\n" in key or "\r" in key or not key.isprintable():
        raise KeyFileUnusable(f"{path} must hold one key on one line")
    return key
