"""L4: the test and bench redis-server keeps its password off its argv (readable by any local
user in /proc/<pid>/cmdline) and its data its owner's only: the settings in a 0600 config
file, the folder 0700, the AOF made 0600."""
from __future__ import annotations

import stat
from pathlib import Path

import redis

from kairos.cluster.storage.redis_server import CONFIG_FILE, RedisServer

PASSWORD = 'ad Qz7"\\9'  # a space, a quote and a backslash, as a config file must quote them


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_password_is_not_on_the_command_line_and_the_data_is_private(tmp_path):
    directory = tmp_path / "redis"
    users = {"kairos": "on >user-Kq4 ~kairos:* +get +set"}
    with RedisServer(directory, password=PASSWORD, users=users) as server:
        # what it was started with (the server overwrites its /proc cmdline with a title once
        # it runs, so that alone would miss the time before, when ps shows the argv)
        argv = " ".join(server.process.args)
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().decode()
        for shown in (argv, cmdline):
            assert "Qz7" not in shown and "Kq4" not in shown, shown
        with server.client() as admin:  # the password as given, quoting and all
            admin.set("kairos:x", b"1")
        with redis.Redis(port=server.port, username="kairos", password="user-Kq4") as user:
            assert user.get("kairos:x") == b"1"
        aofs = [path for path in directory.rglob("*.aof*") if path.is_file()]
        assert aofs
        assert _mode(directory) == 0o700 and _mode(directory / CONFIG_FILE) == 0o600
        assert all(_mode(path) == 0o600 for path in aofs), {p: oct(_mode(p)) for p in aofs}


def test_a_folder_left_open_is_made_private_and_the_data_survives_a_restart(tmp_path):
    directory = tmp_path / "redis"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    server = RedisServer(directory).start()
    try:
        with server.client() as admin:
            admin.set("k", b"v")
        server.stop()
        server.start()
        with server.client() as admin:
            assert admin.get("k") == b"v"
        assert _mode(directory) == 0o700
    finally:
        server.stop()
