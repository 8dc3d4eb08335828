"""The operator's commands that read and write files (replay, uplift, log export, catalog
push) and their numeric options: a file that is not UTF-8, a folder where a file is wanted, a
number out of range or not a number end in a clear error naming the file or the option,
before any work that error would waste, never in a traceback."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import truth
from kairos.cluster.cli import logexport, operate
from kairos.cluster.cli import replay as replay_cli
from kairos.cluster.cli.main import main, parser
from kairos.cluster.evidence.replay import MAX_SAMPLES
from tests.unit.cli.test_log_export import Gateway

NOT_UTF8 = b"name: \xff\xfe catalog\n"
# a folder no user makes a file in (root neither): sysfs
UNWRITABLE = Path("/sys")
needs_sysfs = pytest.mark.skipif(not UNWRITABLE.is_dir(), reason="no /sys to fail writing in")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("offline")
    truth.write_files(folder, truth.log(2, truth.customers(np.random.default_rng(2), 20)))
    (folder / "bin.yaml").write_bytes(NOT_UTF8)
    return folder


def not_entered(monkeypatch, folder: Path) -> None:
    """A name under `folder` looked up as by a user who cannot enter it (another user's 0700
    folder): stat and lstat refuse with EACCES, as the tests run as root, whom modes do not
    stop. /sys, where even root makes no file, is such a folder for what is made in it."""
    for name in ("stat", "lstat"):
        def refused(path, *args, real=getattr(os, name), **kwargs):
            if isinstance(path, (str, os.PathLike)) and \
                    os.fspath(path).startswith(f"{folder}{os.sep}"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path, *args, **kwargs)
        monkeypatch.setattr(os, name, refused)


def replay(files: Path, *more: str, log: str = "log.jsonl") -> int:
    return main(["replay", "--log", str(files / log), "--catalog", str(files / "candidate.yaml"),
                 "--samples", "2", *more])


# 1. catalog push's files, and the catalogs replay and uplift read


@pytest.mark.parametrize("which", ["path", "evidence"])
def test_a_push_of_a_file_that_is_not_utf8_names_it(files, capsys, which):
    """--evidence bin.yaml ended in UnicodeDecodeError (the catalog file too)."""
    chosen = {"path": str(files / "candidate.yaml"), "evidence": None}
    chosen[which] = str(files / "bin.yaml")
    args = argparse.Namespace(target="127.0.0.1:1", expect="", **chosen)
    assert operate.push(args) == 1  # as a file that cannot be read; nothing sent
    assert (f"error: {files / 'bin.yaml'}: not UTF-8 text (byte 0xff at offset 6)"
            in capsys.readouterr().err)


def test_replay_and_uplift_name_a_catalog_that_is_not_utf8(files, capsys):
    log = str(files / "log.jsonl")
    assert main(["replay", "--log", log, "--catalog", str(files / "bin.yaml"),
                 "--out", str(files / "never")]) == 1
    assert main(["uplift", "--log", log, "--catalog", str(files / "candidate.yaml"),
                 "--catalog", str(files / "bin.yaml")]) == 1
    err = capsys.readouterr().err.splitlines()
    # the words of every command for a file that is not UTF-8 (one helper: core.errors.not_text)
    assert err == [f"error: {files / 'bin.yaml'}: not UTF-8 text (byte 0xff at offset 6)"] * 2
    assert not (files / "never").exists()


# 2. log export's --out, said before anything is exported


def export(monkeypatch, out: str) -> Gateway:
    gateway = Gateway([100.0, 101.0])
    monkeypatch.setattr(logexport, "Remote", lambda target: gateway)
    args = argparse.Namespace(target="127.0.0.1:1", out=out, since=99.0, until=102.0,
                              channel="", max_records=0)
    assert logexport.run(args) == 1
    return gateway


@pytest.mark.parametrize("name", ["", "log/", "log.jsonl/"])
def test_an_export_to_a_folder_is_refused_before_it_starts(tmp_path, monkeypatch, capsys,
                                                           name):
    """IsADirectoryError came from the rename, once the whole export had streamed."""
    (tmp_path / "log").mkdir()
    out = f"{tmp_path}/{name}"  # as typed: a Path would drop the trailing slash
    assert export(monkeypatch, out).calls == 0
    assert capsys.readouterr().err == f"error: --out {out}: a folder: name the file to write\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]


@pytest.mark.parametrize("folder", ["missing", "a-file",
                                    pytest.param("unwritable", marks=needs_sysfs)])
def test_an_export_to_a_folder_it_cannot_write_in_is_refused_before_it_starts(
        tmp_path, monkeypatch, capsys, folder):
    (tmp_path / "a-file").write_text("x")
    parent = UNWRITABLE if folder == "unwritable" else tmp_path / folder
    assert export(monkeypatch, str(parent / "log.jsonl")).calls == 0
    reason = {"missing": "No such file or directory", "a-file": "Not a directory",
              "unwritable": "Permission denied"}[folder]
    assert capsys.readouterr().err == (f"error: --out {parent / 'log.jsonl'}: cannot write in "
                                       f"{parent}: {reason}\n")


@needs_sysfs
@pytest.mark.parametrize("name", ["log.jsonl", "sub/log.jsonl"])
def test_an_export_into_a_folder_it_cannot_enter_is_refused_before_it_starts(
        monkeypatch, capsys, name):
    """The check for a folder named as FILE raised PermissionError: pathlib's is_dir passes
    only ENOENT and its kin (Python 3.11), not the EACCES of a folder this user cannot enter."""
    not_entered(monkeypatch, UNWRITABLE)
    out = UNWRITABLE / name
    assert export(monkeypatch, str(out)).calls == 0
    assert capsys.readouterr().err == (f"error: --out {out}: cannot write in {out.parent}: "
                                       f"Permission denied\n")


# 3. replay's --out, said before the replay


def test_replay_to_a_file_or_a_folder_it_cannot_write_in_is_refused_before_the_replay(
        files, capsys):
    """FileExistsError came from writing the report, once the replay was done. Asked first:
    with a log that cannot be read the error is still --out's."""
    (files / "a-file").write_text("x")
    (files / "taken" / "replay.md").mkdir(parents=True)
    (files / "dangling").symlink_to(files / "nowhere")  # write()'s mkdir: FileExistsError
    (files / "to-a-file").symlink_to(files / "a-file")
    refused = {files / "a-file": f"{files / 'a-file'} is not a folder",
               files / "a-file" / "report": f"{files / 'a-file'} is not a folder",
               files / "taken": f"{files / 'taken' / 'replay.md'} is a folder",
               files / "dangling": f"{files / 'dangling'} is not a folder",
               files / "dangling" / "report": f"{files / 'dangling'} is not a folder",
               files / "to-a-file": f"{files / 'to-a-file'} is not a folder"}
    if UNWRITABLE.is_dir():
        refused[UNWRITABLE / "report"] = f"cannot write in {UNWRITABLE}: Permission denied"
    for out, reason in refused.items():
        assert replay(files, "--out", str(out), log="no-such-log.jsonl") == 1
        assert capsys.readouterr().err == f"error: --out {out}: {reason}\n"
    assert (files / "a-file").read_text() == "x"
    assert replay(files, "--out", str(files / "new" / "report")) == 0  # made as before
    assert (files / "new" / "report" / "replay.json").is_file()
    assert not (files / "nowhere").exists()


@needs_sysfs
@pytest.mark.parametrize("name", ["report", "sub/report"])
def test_replay_into_a_folder_it_cannot_enter_is_refused_before_the_replay(
        files, monkeypatch, capsys, name):
    """report.unwritable raised PermissionError: Path.exists passes only ENOENT and its kin.
    The folder named is the one it could not make a file in."""
    not_entered(monkeypatch, UNWRITABLE)
    assert replay(files, "--out", str(UNWRITABLE / name)) == 1
    assert capsys.readouterr().err == (f"error: --out {UNWRITABLE / name}: cannot write in "
                                       f"{UNWRITABLE}: Permission denied\n")


def test_a_report_refused_after_the_replay_is_an_error_not_a_traceback(
        files, monkeypatch, capsys):
    """--out made a file by another while the replay ran (a race; a full disk fails there too):
    report.write's FileExistsError was a traceback once the replay was done."""
    out = files / "raced"
    real = replay_cli.replay

    def replay_raced(*args):
        out.write_text("another's")
        return real(*args)
    monkeypatch.setattr(replay_cli, "replay", replay_raced)
    assert replay(files, "--out", str(out)) == 1
    assert capsys.readouterr().err == f"error: --out {out}: cannot write {out}: File exists\n"
    assert out.read_text() == "another's"


# 4. replay's whole numbers


@pytest.mark.parametrize("option, value", [("--seed", "-1"), ("--seed", str(2**64)),
                                           ("--seed", "1.5"), ("--limit", "-1"),
                                           ("--limit", str(sys.maxsize + 1)),
                                           ("--samples", "0"),
                                           ("--samples", str(MAX_SAMPLES + 1))])
def test_replay_numbers_out_of_range_are_argument_errors(files, capsys, option, value):
    """--seed -1 ended in numpy's OverflowError after the log was read; a --limit past
    islice's bound in its ValueError; --samples was refused by run(), without the usage."""
    with pytest.raises(SystemExit) as exited:
        replay(files, "--out", str(files / "never"), option, value)
    assert exited.value.code == 2 and f"argument {option}: must be" in capsys.readouterr().err
    assert not (files / "never").exists()


def test_replay_takes_the_largest_seed(files, capsys):
    assert replay(files, "--out", str(files / "largest"), "--seed", str(2**64 - 1)) == 0
    assert "20 of 20 logged decisions replayed" in capsys.readouterr().out


# 5. seconds and rates: positive, finite, bounded


@pytest.mark.parametrize("argv, most", [
    (["start", "--address", "auto", "--ray-wait"], 86_400),
    (["drain", "node", "--timeout"], 86_400),
    (["up", "--shards-per-cpu"], 64)])
def test_positive_options_are_bounded(capsys, argv, most):
    """start --ray-wait 1e300 killed the watchdog's timer thread (OverflowError): the wait had
    no bound; drain --timeout took the same."""
    option = argv[-1]
    for value in ["1e300", "inf", "nan", "0", "-1", "soon", str(most * 1.5)]:
        with pytest.raises(SystemExit) as exited:
            parser(50051).parse_args([*argv, value])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {option}: must be a number above 0, at most {most}, got " \
               f"{value!r}" in err
    dest = option.lstrip("-").replace("-", "_")
    assert getattr(parser(50051).parse_args([*argv, str(most)]), dest) == most
    assert getattr(parser(50051).parse_args([*argv, "0.5"]), dest) == 0.5


def test_the_bounds_are_in_the_help(capsys):
    for argv in (["start", "--help"], ["drain", "--help"], ["up", "--help"]):
        with pytest.raises(SystemExit):
            parser(50051).parse_args(argv)
    helps = " ".join(capsys.readouterr().out.split())
    assert "up to 86400 s" in helps and "up to 86400 (default 600)" in helps
    assert "(up to 64)" in helps

