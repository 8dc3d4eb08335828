"""The keys file is refused at load (`kairos up`, a gateway, the console: Auth.load), naming the
entry, where it would fail open: a misspelled or unknown field, or a `channel` that names no
channel, read as absent, gave a key meant for one channel every channel; a blank secret was a
key. Nothing of the secrets is quoted."""
from __future__ import annotations

import pytest

from kairos.cluster.gateway.auth import Auth

SECRET = "web-0123456789abcdef"


def entry(fields: str) -> str:
    return f"keys:\n  - {{key: {SECRET}, scopes: [decide]}}\n  - {{{fields}}}\n"


@pytest.mark.parametrize("fields, error", [
    ("key: s3cret-0123456789ab, name: web, scopes: [decide], chanel: web",
     "keys[1] ('web'): unknown field 'chanel' (fields: key, name, channel, scopes)"),
    ("key: s3cret-0123456789ab, scopes: [decide], channels: [web]",
     "keys[1]: unknown field 'channels' (fields: key, name, channel, scopes)"),
    ("key: s3cret-0123456789ab, scopes: [decide], Channel: web",
     "keys[1]: unknown field 'Channel' (fields: key, name, channel, scopes)"),
    ("scopes: [decide], s3cret-0123456789ab: web",  # a secret where a field's name goes
     "keys[1]: unknown field (fields: key, name, channel, scopes)"),
    ("key: s3cret-0123456789ab, scopes: [decide], channel: ''",
     "keys[1]: 'channel' must name one channel (lowercase letters, digits and '_'), got str "
     "''; leave it out for a key of every channel"),
    ("key: s3cret-0123456789ab, scopes: [decide], channel: ~",
     "keys[1]: 'channel' must name one channel (lowercase letters, digits and '_'), got "
     "nothing; leave it out for a key of every channel"),
    ("key: s3cret-0123456789ab, scopes: [decide], channel: [web, app]",
     "keys[1]: 'channel' must name one channel"),
    ("key: s3cret-0123456789ab, scopes: [decide], channel: 7",
     "keys[1]: 'channel' must name one channel"),
    ("key: s3cret-0123456789ab, scopes: [decide], channel: ' web'",
     "keys[1]: 'channel' must name one channel"),
    ("key: '                ', name: blank, scopes: [decide]",
     "keys[1] ('blank'): 'key' must be a string of at least 16 characters, without whitespace"),
    ("key: ' s3cret-0123456789ab', scopes: [decide]",
     "keys[1]: 'key' must be a string of at least 16 characters, without whitespace"),
])
def test_a_key_entry_that_would_fail_open_is_refused_naming_it(fields, error):
    with pytest.raises(ValueError) as refused:
        Auth.load(entry(fields))
    assert str(refused.value).startswith(f"API keys: {error}")
    assert "s3cret" not in str(refused.value)


def test_a_key_bound_to_a_channel_or_to_none_loads():
    auth = Auth.load(entry("key: app-0123456789abcdef, name: app, scopes: [decide], "
                           "channel: app"))
    assert auth.identify("app-0123456789abcdef").channel == "app"
    assert auth.identify(SECRET).channel is None
