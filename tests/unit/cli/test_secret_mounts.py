"""Secrets as Kubernetes mounts them for a pod that does not run as root (a Secret volume
with `defaultMode: 0440` and the pod's `fsGroup`: root's files, read-only, readable by the
fsGroup, which the pod's processes are in) pass the check of secrets' files; the rest of what
the check refuses is still refused. The command line's API key may come from such a file
(KAIROS_API_KEY_FILE), so that no secret of Kairos's is in a pod's environment."""
from __future__ import annotations

import os

import pytest

from kairos.cluster.cli import remote, secret_files
from kairos.cluster.cli.secret_files import SecretFileError, check_secret_file
from kairos.cluster.gateway.auth import METADATA_KEY

MINE = os.getegid()
OTHER_GROUP = max({os.getegid(), *os.getgroups()}) + 1
NOT_ROOT = 1000


@pytest.fixture
def mounted(tmp_path, monkeypatch):
    """A file whose owner, group and mode are what the test says (os.stat answers for it as
    the kubelet would have made it), and a process that is not root."""
    path = tmp_path / "api-keys.yaml"
    path.write_text("keys: []\n")
    real_stat = os.stat
    shown = {}

    def fake_stat(name, *args, **kwargs):
        st = real_stat(name, *args, **kwargs)
        if os.fspath(name) != str(path):
            return st
        fields = list(st)
        fields[0] = (st.st_mode & ~0o7777) | shown["mode"]
        fields[4], fields[5] = shown["uid"], shown["gid"]
        return os.stat_result(fields)
    monkeypatch.setattr(secret_files.os, "stat", fake_stat)
    monkeypatch.setattr(secret_files.os, "geteuid", lambda: NOT_ROOT)

    def as_(uid: int, gid: int, mode: int) -> str:
        shown.update(uid=uid, gid=gid, mode=mode)
        return str(path)
    return as_


@pytest.mark.parametrize("mode", [0o440, 0o040])
def test_a_secret_mounted_read_only_for_the_pods_group_passes(mounted, mode):
    check_secret_file(mounted(0, MINE, mode), "--keys")


@pytest.mark.parametrize("uid, gid, mode", [
    (0, MINE, 0o444),          # others can read it (a Secret volume's default mode, 0644 too)
    (0, MINE, 0o644),
    (0, MINE, 0o640),          # writable
    (0, MINE, 0o460),          # writable by the group
    (0, MINE, 0o400),          # root's alone: this process could not read it
    (0, MINE, 0o4440),         # setuid
    (0, OTHER_GROUP, 0o440),   # a group this process is not in
    (NOT_ROOT + 1, MINE, 0o440),  # another user's, who could make it anything
], ids=["0444", "0644", "0640", "0460", "0400", "setuid", "other-group", "other-user"])
def test_what_is_not_so_mounted_is_still_refused(mounted, uid, gid, mode):
    with pytest.raises(SecretFileError) as refused:
        check_secret_file(mounted(uid, gid, mode), "--keys")
    assert "--keys" in str(refused.value)


def test_a_refused_secret_of_another_user_says_how_kubernetes_should_mount_it(mounted):
    with pytest.raises(SecretFileError, match="defaultMode: 0440 and the pod's fsGroup"):
        check_secret_file(mounted(0, MINE, 0o644), "--keys")


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.delenv(remote.KEY_ENV, raising=False)
    monkeypatch.delenv(remote.KEY_FILE_ENV, raising=False)


def _key_file(tmp_path, mode: int, text: str = "the-admin-key\n") -> str:
    path = tmp_path / "admin-key"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_the_api_key_is_read_from_the_file_kairos_api_key_file_names(tmp_path, monkeypatch,
                                                                      key_env):
    monkeypatch.setenv(remote.KEY_FILE_ENV, _key_file(tmp_path, 0o600))
    client = remote.Remote("127.0.0.1:1")
    assert client.metadata == ((METADATA_KEY, "the-admin-key"),)
    client.close()
    monkeypatch.setenv(remote.KEY_ENV, "from-the-variable")  # the variable, when set, wins
    assert remote.api_key_from_env() == "from-the-variable"


def test_a_key_file_others_can_read_or_none_at_all_stops_the_command(tmp_path, monkeypatch,
                                                                     key_env):
    path = _key_file(tmp_path, 0o644)
    monkeypatch.setenv(remote.KEY_FILE_ENV, path)
    with pytest.raises(SystemExit, match=f"KAIROS_API_KEY_FILE {path} has mode 0644"):
        remote.api_key_from_env()
    monkeypatch.setenv(remote.KEY_FILE_ENV, str(tmp_path / "absent"))
    with pytest.raises(SystemExit, match="absent: No such file"):
        remote.api_key_from_env()


def test_without_either_no_key_is_sent(key_env):
    assert remote.api_key_from_env() is None
