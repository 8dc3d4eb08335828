"""Secrets as Kubernetes mounts them for a pod that does not run as root (a Secret volume
with `defaultMode: 0440` and the pod's `fsGroup`: root's files, read-only, readable by the
fsGroup, which the pod's processes are in) pass the check of secrets' files; the rest of what
the check refuses is still refused. The command line's API key may come from such a file
(KAIROS_API_KEY_FILE), so that no secret of Kairos's is in a pod's environment."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kairos.cluster import secret_files
from kairos.cluster.cli import remote
from kairos.cluster.gateway.auth import METADATA_KEY
from kairos.cluster.secret_files import SecretFileError, check_secret_file

MINE = os.getegid()
OTHER_GROUP = max({os.getegid(), *os.getgroups()}) + 1
NOT_ROOT = 1000


def secret_volume(root: Path, name: str = "api-keys.yaml") -> Path:
    """A Secret volume as the kubelet lays it out (its AtomicWriter): the file in a
    `..<timestamp>` directory, `..data` linking to that directory, and NAME -> ..data/NAME.
    The file's path in the volume (through its link)."""
    root.mkdir(parents=True, exist_ok=True)
    version = root / "..2026_12_05_10_00_00.123456789"
    (version / name).parent.mkdir(parents=True)
    (version / name).write_text("keys: []\n")
    (root / secret_files.VOLUME_DATA).symlink_to(version.name)
    top = name.split("/")[0]
    (root / top).symlink_to(f"{secret_files.VOLUME_DATA}/{top}")
    return root / name


@pytest.fixture
def mounted(tmp_path, monkeypatch):
    """A file whose owner, group and mode are what the test says (os.stat answers for it as
    the kubelet would have made it), by default in a real Secret volume layout, and a
    process that is not root."""
    files = {"volume": secret_volume(tmp_path / "volume"), "plain": tmp_path / "keys.yaml"}
    files["plain"].write_text("keys: []\n")
    real_stat = os.stat
    shown = {}

    def fake_stat(name, *args, **kwargs):
        st = real_stat(name, *args, **kwargs)
        if os.path.realpath(name) != os.path.realpath(shown["path"]):
            return st
        fields = list(st)
        fields[0] = (st.st_mode & ~0o7777) | shown["mode"]
        fields[4], fields[5] = shown["uid"], shown["gid"]
        return os.stat_result(fields)
    monkeypatch.setattr(secret_files.os, "stat", fake_stat)
    monkeypatch.setattr(secret_files.os, "geteuid", lambda: NOT_ROOT)

    def as_(uid: int, gid: int, mode: int, where: str = "volume") -> str:
        shown.update(uid=uid, gid=gid, mode=mode, path=str(files[where]))
        return str(files[where])
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


def test_the_same_file_outside_a_secret_volume_is_refused(mounted):
    """The review's host: root's, 0440, group `users`, which this process and every other
    user are in. Its owner, group and mode are a projected Secret's, but nothing ties the
    group to one pod: without the volume's layout it is refused."""
    with pytest.raises(SecretFileError, match="owned by uid 0 .*under the volume's ..data"):
        check_secret_file(mounted(0, MINE, 0o440, where="plain"), "--keys")


def _as_projected(monkeypatch, path: Path) -> None:
    """os.stat shows the file `path` resolves to as the kubelet makes it; the process is not
    root."""
    real, real_stat = os.path.realpath(path), os.stat

    def fake_stat(name, *args, **kwargs):
        st = real_stat(name, *args, **kwargs)
        if os.path.realpath(name) != real:
            return st
        return os.stat_result([(st.st_mode & ~0o7777) | 0o440, *list(st)[1:4], 0, MINE,
                               *list(st)[6:]])
    monkeypatch.setattr(secret_files.os, "stat", fake_stat)
    monkeypatch.setattr(secret_files.os, "geteuid", lambda: NOT_ROOT)


def test_a_secret_volumes_file_at_a_nested_path_or_through_data_passes(tmp_path, monkeypatch):
    nested = secret_volume(tmp_path / "v", "tls/server.key")  # items: path: tls/server.key
    _as_projected(monkeypatch, nested)
    check_secret_file(str(nested), "--tls-key")
    check_secret_file(str(tmp_path / "v" / "..data" / "tls" / "server.key"), "--tls-key")


def _links_elsewhere(root: Path) -> Path:
    """A volume's layout, and beside it NAME linking to a file outside the volume."""
    secret_volume(root)
    outside = root.parent / "outside.yaml"
    outside.write_text("keys: []\n")
    (root / "other.yaml").symlink_to(outside)
    return root / "other.yaml"


def _data_to_a_plain_directory(root: Path) -> Path:
    (root / "current").mkdir(parents=True)
    (root / "current" / "keys.yaml").write_text("keys: []\n")
    (root / "..data").symlink_to("current")
    (root / "keys.yaml").symlink_to("..data/keys.yaml")
    return root / "keys.yaml"


def _a_plain_file_beside_data(root: Path) -> Path:
    secret_volume(root)
    (root / "plain.yaml").write_text("keys: []\n")
    return root / "plain.yaml"


def _data_out_of_the_volume(root: Path) -> Path:
    elsewhere = root.parent / "..2026_12_05"
    elsewhere.mkdir(parents=True)
    (elsewhere / "keys.yaml").write_text("keys: []\n")
    root.mkdir()
    (root / "..data").symlink_to(elsewhere)
    (root / "keys.yaml").symlink_to("..data/keys.yaml")
    return root / "keys.yaml"


@pytest.mark.parametrize("made", [_links_elsewhere, _data_to_a_plain_directory,
                                  _a_plain_file_beside_data, _data_out_of_the_volume],
                         ids=["link-out", "data-not-versioned", "plain-file", "data-outside"])
def test_what_only_looks_like_a_secret_volume_is_refused(tmp_path, monkeypatch, made):
    path = made(tmp_path / "volume")
    _as_projected(monkeypatch, path)
    with pytest.raises(SecretFileError, match="owned by uid 0"):
        check_secret_file(str(path), "--keys")


USERS = 100  # the group every user of the review's host is in


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root (to make root's files) and setpriv")
def test_real_root_owned_files_read_by_a_user_in_their_group():
    """Nothing faked: files root owns, in group 100, mode 0440, checked (and read) by a
    process of uid 1000 with group 100 among its groups, in and out of a Secret volume's
    layout (in a directory that user can reach: pytest's tmp_path is root's alone)."""
    as_user = ["setpriv", "--reuid", "1000", "--regid", "1000", "--groups", str(USERS)]
    if subprocess.run([*as_user, sys.executable, "-c", "import kairos.cluster.secret_files"],
                      capture_output=True).returncode:
        pytest.skip("uid 1000 cannot run this checkout's Python (it lies under a directory "
                    "only root may enter, as a `mktemp -d` one)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        in_volume = secret_volume(root / "volume")
        plain = root / "keys.yaml"
        plain.write_text("keys: []\n")
        for path in (os.path.realpath(in_volume), plain):
            os.chown(path, 0, USERS)
            os.chmod(path, 0o440)
        check = ("import sys; from kairos.cluster.secret_files import check_secret_file, "
                 "SecretFileError\ntry: check_secret_file(sys.argv[1], '--keys')\n"
                 "except SecretFileError: print('refused')\n"
                 "else: print('accepted', open(sys.argv[1]).read().strip())")
        answers = [subprocess.run(
            [*as_user, sys.executable, "-c", check, str(path)], capture_output=True, text=True,
            check=True, cwd=root).stdout.strip() for path in (in_volume, plain)]
    assert answers == ["accepted keys: []", "refused"]


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
