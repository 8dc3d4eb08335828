"""The store a URL names (`open_store`). The one module that imports every implementation;
they import only the interface (store.py), so no module imports one that imports it back.

A Redis store's password never travels in its URL between Kairos's processes: the URL's
copies that Ray passes (the controller's, the learner's, each shard's arguments) are kept by
Ray's GCS with their task specs. Each process that opens the store reads the password from
the file $KAIROS_STORE_PASSWORD_FILE names (`with_password_file`) instead."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import quote, unquote, unquote_plus, urlparse

from kairos.cluster.secret_files import SecretFileError, check_secret_file
from kairos.cluster.storage.directory_store import DirectoryStore
from kairos.cluster.storage.memory_store import MemoryStore
from kairos.cluster.storage.redis_store import STORE_PASSWORD_FILE_ENV, RedisStore
from kairos.cluster.storage.store import Store, redact

log = logging.getLogger("kairos.store")

__all__ = ["open_store", "directory_of", "redact", "split_password", "with_password_file",
           "STORE_PASSWORD_FILE_ENV", "REDIS_SCHEMES"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_store(url: str) -> Store:
    """`memory`, a directory path (or `file:///path`), or `redis://host:port/db[?prefix=p]`
    (its password from the file $KAIROS_STORE_PASSWORD_FILE names, when that is set)."""
    if url == "memory":
        return MemoryStore()
    if url.startswith(REDIS_SCHEMES):
        return RedisStore(with_password_file(url))
    directory = directory_of(url)
    if directory is None:
        raise ValueError(f"unknown store {redact(url)!r}: use 'memory', a directory, or "
                         f"redis://host:port/db")
    return DirectoryStore(directory)


def directory_of(url: str) -> Path | None:
    """The directory `open_store` opens for `url` (a path, or file:///path), else None (memory,
    Redis, a scheme unknown). A shard reads a directory's claim by it before it builds the
    store (shard/recovering.py `StoreAt`)."""
    if url.startswith("file://"):
        url = urlparse(url).path
    if url == "memory" or "://" in url:
        return None
    return Path(os.path.expanduser(url))


def split_password(url: str) -> tuple[str, str]:
    """A Redis URL without the password it holds (`user:password@` or `:password@` before the
    host, a `password=` parameter, as redis-py reads them), and that password, decoded ("":
    none). Any other URL as it is, with ""."""
    if not url.startswith(REDIS_SCHEMES):
        return url, ""
    scheme, _, rest = url.partition("://")
    # as redact() reads it: the last "@" ends the credentials, whatever they hold
    credentials, at, place = rest.rpartition("@")
    user, colon, in_credentials = credentials.partition(":")
    head, q, query = place.partition("?")
    kept, password = [], ""
    for parameter in query.split("&") if q else []:
        name, _, value = parameter.partition("=")
        if unquote_plus(name) == "password":  # as parse_qs decodes names: pass%77ord too
            password = unquote_plus(value)  # redis-py reads the query with parse_qs: "+" is " "
        else:
            kept.append(parameter)
    bare = f"{scheme}://{user}{at if user else ''}{head}" + ("?" + "&".join(kept) if kept else "")
    # redis-py: a password in the credentials wins over the parameter
    return bare, (unquote(in_credentials) if colon else "") or password


def with_password_file(url: str) -> str:
    """`url` with the password from the file $KAIROS_STORE_PASSWORD_FILE names, when it is set
    (a secret's file: see check_secret_file), put in percent-encoded: `redis://host...`
    becomes `redis://:PASSWORD@host...`, and one with a Redis ACL user, `redis://USER@host...`,
    becomes `redis://USER:PASSWORD@host...`. A URL that holds a password is used as it is:
    the controller of a cluster an older Kairos started hands its shards such a URL, on Ray
    nodes that have the variable too (the CLI refuses every URL that holds one). Refused
    (ValueError, whose words never hold the password) for a store that is not Redis, a URL
    the password cannot go into, or a file refused, unreadable or empty."""
    path = os.environ.get(STORE_PASSWORD_FILE_ENV)
    if not path:
        return url
    if split_password(url)[1]:  # should the server refuse it, its refusal names the file
        log.warning("store %s: the URL holds a password (an older Kairos's controller passed "
                    "it on), used instead of the file %s names", redact(url),
                    STORE_PASSWORD_FILE_ENV)
        return url
    scheme, _, rest = url.partition("://")
    user, _, place = rest.rpartition("@")
    if not url.startswith(REDIS_SCHEMES) or split_password(url)[0] != url \
            or any(c in user for c in "/?#"):
        raise ValueError(
            f"{STORE_PASSWORD_FILE_ENV} is set, so the store must be a redis://, rediss:// or "
            f"unix:// URL without a password (a user name alone may come before the host), "
            f"not {redact(url)}")
    try:
        check_secret_file(path, STORE_PASSWORD_FILE_ENV)
        # newline="": a CR inside the password is the password's, as Redis takes it
        with open(path, encoding="utf-8", newline="") as f:
            password = f.read().rstrip("\r\n")
    except SecretFileError as exc:
        raise ValueError(str(exc)) from None
    except OSError as exc:
        raise ValueError(f"{STORE_PASSWORD_FILE_ENV} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{STORE_PASSWORD_FILE_ENV} {path} is not UTF-8 text") from None
    if not password:
        raise ValueError(f"{STORE_PASSWORD_FILE_ENV} {path} is empty")
    return f"{scheme}://{user}:{quote(password, safe='')}@{place}"
