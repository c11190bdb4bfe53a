"""The ``seqmix`` command line: ``seqmix list`` shows the registry with state sizes."""

from __future__ import annotations

import json

import pytest

from seqmix import build_mixer, list_mixers
from seqmix.cli import main


def test_list_json_matches_registry(capsys):
    main(["list", "--d_model", "64", "--context_len", "100", "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [s.name for s in list_mixers()]
    for row in rows:
        mixer = build_mixer(row["name"], d_model=64)
        assert row["state_floats"] == mixer.state_size(100)
        assert row["parameters"] == sum(p.numel() for p in mixer.parameters())
        assert tuple(row["modes"]) == mixer.modes


def test_list_table_names_every_mixer(capsys):
    main(["list"])
    out = capsys.readouterr().out
    for spec in list_mixers():
        assert spec.name in out


def test_list_rejects_a_bad_format():
    with pytest.raises(SystemExit):
        main(["list", "--format", "xml"])


def test_config_file_supplies_flags(tmp_path, capsys):
    config = tmp_path / "list.yaml"
    config.write_text("d_model: 32\ncontext_len: 7\nformat: json\n")
    main(["list", "--config", str(config)])
    rows = json.loads(capsys.readouterr().out)
    attention = next(r for r in rows if r["name"] == "attention")
    assert attention["state_floats"] == build_mixer("attention", d_model=32).state_size(7)
