"""Run directories read back: the expected command's manifest, or one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actscope.analyses.rundirs import read_json, read_manifest
from actscope.errors import DataError


def test_read_manifest_refuses_what_is_not_the_expected_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="profile run .*nowhere not found"):
        read_manifest(tmp_path / "nowhere", "profile")
    with pytest.raises(DataError, match="not an actscope run directory"):
        read_manifest(tmp_path, "profile")
    (tmp_path / "manifest.json").write_bytes(b"\xff\x00")
    with pytest.raises(DataError, match="as UTF-8 text"):
        read_manifest(tmp_path, "profile")
    (tmp_path / "manifest.json").write_text("[1]")
    with pytest.raises(DataError, match="not a JSON object"):
        read_manifest(tmp_path, "profile")
    (tmp_path / "manifest.json").write_text(json.dumps({"command": "steer train"}))
    with pytest.raises(DataError, match="not a profile run .*'steer train'"):
        read_manifest(tmp_path, "profile")
    assert read_manifest(tmp_path, "steer train") == {"command": "steer train"}


def test_read_json_reports_invalid_json(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text("{")
    with pytest.raises(DataError, match="summary .*s.json is not valid JSON"):
        read_json(tmp_path / "s.json", "summary")
