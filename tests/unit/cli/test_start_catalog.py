"""`kairos start`/`kairos up --catalog FILE` with a catalog that only checks newer than saved
catalogs refuse (a version with a space, valid before f8cc0db): the start goes on, saying each
refusal, since Kubernetes passes the head the catalog its store may run already at every start
and a restart is never refused its catalog; a catalog that no load takes still stops it, and
`kairos catalog validate` (a new catalog) still refuses the first."""
from __future__ import annotations

import re

import pytest

from kairos.cluster.cli.main import Refused, checked_inputs, main, parser
from kairos.core.catalog import default_catalog_text
from tests.unit.cli.test_cli import KEYS

SPACED = re.sub(r"^version: .*$", 'version: "2026.12 launch"', default_catalog_text(),
                count=1, flags=re.M)


@pytest.fixture
def spaced(tmp_path) -> str:
    path = tmp_path / "spaced.yaml"
    path.write_text(SPACED)
    return str(path)


@pytest.mark.parametrize("command", [["start", "--address", "127.0.0.1:1", "--insecure"],
                                     ["up"]])
def test_a_catalog_only_newer_checks_refuse_starts_with_a_warning(spaced, command, capsys,
                                                                  monkeypatch):
    monkeypatch.delenv("KAIROS_STORE", raising=False)
    monkeypatch.setenv("KAIROS_API_KEYS", KEYS)  # `start`'s gateways are on 0.0.0.0
    args = parser(50051).parse_args([*command, "--catalog", spaced])
    assert checked_inputs(args) == SPACED
    warning = capsys.readouterr().err
    assert warning.startswith(f"warning: {spaced}:")
    assert "version: expected at most 64 ASCII letters" in warning
    assert "as PutCatalog and `kairos catalog validate` do" in warning


def test_a_catalog_no_load_takes_still_stops_the_start(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(SPACED.replace("kairos_catalog: 1", "kairos_catalog: 9"))
    with pytest.raises(Refused) as refused:
        checked_inputs(parser(50051).parse_args(["up", "--catalog", str(path)]))
    assert refused.value.status == 1
    assert "unsupported catalog format 9" in str(refused.value)


def test_validate_still_refuses_it_as_a_new_catalog(spaced, capsys):
    assert main(["catalog", "validate", spaced]) == 1
    assert "version: expected at most 64 ASCII letters" in capsys.readouterr().err
