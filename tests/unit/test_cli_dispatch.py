"""The `traitlab <subcommand>` dispatcher: a table other subcommands join by adding a row."""

from __future__ import annotations

import sys

import pytest

from traitlab import cli


def test_dispatch_hands_the_rest_of_argv_to_the_subcommand(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.SUBCOMMANDS, "probe", (lambda: seen.append(list(sys.argv)), "test row"))
    cli.main(["probe", "trait=starter/optimism", "layers=9-11"])
    assert seen == [["traitlab probe", "trait=starter/optimism", "layers=9-11"]]


def test_help_lists_every_subcommand_and_unknown_ones_fail(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in ("extract", "steer", "infer", "analyze", "export", "serve"))
    with pytest.raises(SystemExit) as done:
        cli.main(["exprot"])
    assert done.value.code == 2
    assert "unknown subcommand 'exprot'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        cli.main([])
    assert done.value.code == 2
