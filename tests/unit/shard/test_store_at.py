"""What a shard opens its store by (recovering.py `StoreAt`): a Redis store is built once per
build of the Shard, the claim read on the store the build then uses; a directory's claim is
read by the path open_store opens (providers.py `directory_of`)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kairos.cluster.shard.host import ShardHost
from kairos.cluster.shard.recovering import StoreAt
from kairos.cluster.storage import providers
from kairos.cluster.storage.redis_server import RedisServer
from kairos.cluster.storage.redis_store import RedisStore

from .test_same_name import EVERY
from .test_shard import N_PARTITIONS


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield f"{server.url}?prefix=at"
    server.stop()


def test_a_build_on_redis_opens_the_store_once(compiled, redis_url, monkeypatch):
    """Each build read the claim on a Redis store of its own, then built another to use."""
    RedisStore(redis_url).claim("ours", "the controller")
    built: list[RedisStore] = []

    class Counted(RedisStore):  # the real store, its builds listed
        def __init__(self, url: str):
            super().__init__(url)
            built.append(self)
    monkeypatch.setattr(providers, "RedisStore", Counted)
    host = ShardHost("kairos-shard-0", N_PARTITIONS, 1, StoreAt(redis_url), tick_s=3600.0,
                     owner="ours")

    async def main():
        await host.start(compiled, EVERY, [])
        assert host.shard is not None, host.recovery
        assert built == [host.shard.store]
        await host.start(compiled, EVERY, [])  # a start again builds a Shard again
        assert host.shard is not None, host.recovery
        assert built[1:] == [host.shard.store]
        host.stop()
        host.shard.close()
    asyncio.run(main())


@pytest.mark.parametrize("url, directory", [
    ("/var/kairos", Path("/var/kairos")), ("file:///var/kairos", Path("/var/kairos")),
    ("~/kairos", Path.home() / "kairos"), ("memory", None), ("redis://host:6379/0", None),
    ("s3://bucket", None)])
def test_the_directory_a_url_names(url, directory):
    assert providers.directory_of(url) == directory
