"""`python -m service init-env`: a private `.env` from the first byte, never overwriting one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from service.config import load_settings
from service.envfile import init_env


@pytest.fixture
def open_umask():
    """A umask that would let a default-permission file be read by anyone."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_file_is_created_private_without_a_chmod_afterwards(tmp_path, monkeypatch, open_umask):
    def no_chmod(*_args, **_kwargs):
        raise AssertionError("the mode must be set when the file is created, not afterwards")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    target = tmp_path / ".env"
    assert init_env(str(target)).startswith("wrote ")
    assert _mode(target) == 0o600
    values = dict(line.split("=", 1) for line in target.read_text().splitlines() if "=" in line)
    settings = load_settings(_env_file=str(target))
    assert settings.API_KEY_PEPPER.get_secret_value() == values["API_KEY_PEPPER"]
    assert settings.SERVICE_TOKENS[0].scopes == {"read", "write", "secrets"}


def test_the_secrets_differ_on_every_new_file(tmp_path):
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    init_env(str(first))
    init_env(str(second))
    assert first.read_text() != second.read_text()


def test_an_existing_file_is_kept_as_it_is(tmp_path, open_umask):
    target = tmp_path / ".env"
    target.write_text("DATABASE_URL=postgresql://mine\n")
    target.chmod(0o640)
    assert init_env(str(target)) == f"using existing {target.resolve()}"
    assert target.read_text() == "DATABASE_URL=postgresql://mine\n"
    assert _mode(target) == 0o640


def test_a_second_run_keeps_the_first_runs_secrets(tmp_path):
    target = tmp_path / ".env"
    init_env(str(target))
    first = target.read_text()
    assert init_env(str(target)).startswith("using existing")
    assert target.read_text() == first


def test_a_symlink_in_its_place_is_neither_followed_nor_replaced(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not a secret\n")
    target = tmp_path / ".env"
    target.symlink_to(elsewhere)
    assert init_env(str(target)).startswith("using existing")
    assert target.is_symlink()
    assert elsewhere.read_text() == "not a secret\n"


def test_a_dangling_symlink_is_not_followed_to_create_its_target(tmp_path):
    target = tmp_path / ".env"
    target.symlink_to(tmp_path / "missing")
    assert init_env(str(target)).startswith("using existing")
    assert not (tmp_path / "missing").exists()
