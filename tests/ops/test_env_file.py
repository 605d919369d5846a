"""`toolcallstore --env-file FILE`: NAME=value lines into the environment, bad lines named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from toolcallstore.cli import load_env_file, main
from toolcallstore.errors import ConfigError


def test_lines_comments_quotes_and_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "env"
    file.write_text(
        "# the store\n\nTOOLCALLSTORE_PORT=8417\nexport OPENAI_API_KEY='sk-a=b'\n"
        'TOOLCALLSTORE_LOG_LEVEL = "warning"\n'
    )
    # The file overrides what was inherited. Each name is set here first so that monkeypatch
    # restores it afterwards: load_env_file writes os.environ, and a value left behind (a log
    # level of "warning") would reach every server a later test starts.
    monkeypatch.setenv("TOOLCALLSTORE_PORT", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "inherited")
    monkeypatch.setenv("TOOLCALLSTORE_LOG_LEVEL", "info")
    load_env_file(file)
    assert os.environ["TOOLCALLSTORE_PORT"] == "8417"
    assert os.environ["OPENAI_API_KEY"] == "sk-a=b"
    assert os.environ["TOOLCALLSTORE_LOG_LEVEL"] == "warning"


def test_a_bad_line_or_a_missing_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLCALLSTORE_PORT", "8000")  # restored, whatever the file set
    file = tmp_path / "env"
    file.write_text("TOOLCALLSTORE_PORT=1\nthis is not a setting\n")
    with pytest.raises(ConfigError, match=f"{file}:2 is not NAME=value"):
        load_env_file(file)
    assert main(["--env-file", str(tmp_path / "none"), "migrate"]) == 2
    assert "cannot read the env file" in capsys.readouterr().err
