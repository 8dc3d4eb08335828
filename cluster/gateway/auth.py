"""API keys: who may call what, and for which channel.

Keys are YAML (or JSON), from a file (`--keys FILE`) or the KAIROS_API_KEYS variable:

    keys:
      - key: "web-7f3a..."          # sent by the caller in the x-api-key metadata entry
        name: web-frontend
        channel: web                # optional: the key may only act on this channel
        scopes: [decide, ingest, respond, watch]
      - key: "ops-..."
        name: operators
        scopes: [admin, profile:read]

Without keys, auth is off, which the gateway allows only on a loopback address.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

import yaml

SCOPES = ("decide", "ingest", "respond", "watch", "profile:read", "admin")
KEYS_ENV = "KAIROS_API_KEYS"
METADATA_KEY = "x-api-key"


class Denied(Exception):
    def __init__(self, authenticated: bool, reason: str):
        super().__init__(reason)
        self.authenticated = authenticated


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[str]
    channel: str | None = None


class Auth:
    def __init__(self, keys: dict[str, ApiKey]):
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def load(cls, text: str | None) -> "Auth":
        """Keys from YAML text (None or empty: auth off)."""
        if not text or not text.strip():
            return cls({})
        doc = yaml.safe_load(text)
        entries = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise ValueError("API keys: expected a mapping with a 'keys' list")
        keys = {}
        for i, entry in enumerate(entries):
            where = f"API keys: keys[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or \
                    len(entry["key"]) < 16:
                raise ValueError(f"{where}: 'key' must be a string of at least 16 characters")
            scopes = entry.get("scopes")
            if not isinstance(scopes, list) or not scopes:
                raise ValueError(f"{where}: 'scopes' must be a non-empty list")
            unknown = [s for s in scopes if s not in SCOPES]
            if unknown:
                raise ValueError(f"{where}: unknown scope {unknown[0]!r} (scopes: "
                                 f"{', '.join(SCOPES)})")
            if entry["key"] in keys:
                raise ValueError(f"{where}: the same key appears twice")
            keys[entry["key"]] = ApiKey(str(entry.get("name", f"key {i}")),
                                        frozenset(scopes), entry.get("channel"))
        return cls(keys)

    @classmethod
    def from_environment(cls, path: str | None = None) -> "Auth":
        if path:
            with open(path, encoding="utf-8") as f:
                return cls.load(f.read())
        return cls.load(os.environ.get(KEYS_ENV))

    def check(self, metadata, scope: str, channel: str | None = None) -> ApiKey | None:
        """The caller's key if it may use `scope` (on `channel`); raises Denied otherwise."""
        if not self.enabled:
            return None
        presented = dict(metadata or ()).get(METADATA_KEY)
        key = self.keys.get(presented) if presented else None
        if key is None:
            raise Denied(False, f"missing or unknown API key (send it as '{METADATA_KEY}')")
        if scope not in key.scopes:
            raise Denied(True, f"key '{key.name}' lacks the '{scope}' scope")
        if channel and key.channel and channel != key.channel:
            raise Denied(True, f"key '{key.name}' is for channel '{key.channel}', not "
                               f"'{channel}'")
        return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
