"""Configuration: every variable parsed once; a bad or missing value stops start-up by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import ConfigError, Settings, load_settings
from tests.support import PEPPER, SALT, SERVICE_TOKENS

ROOT = Path(__file__).resolve().parent.parent
GOOD = {
    "API_KEY_PEPPER": PEPPER,
    "FERNET_SALT": SALT,
    "SERVICE_TOKENS": SERVICE_TOKENS,
    "_env_file": None,
}


def _load(**values: object) -> Settings:
    settings: Settings = load_settings(**{**GOOD, **values})
    return settings


class TestParsing:
    def test_defaults(self):
        settings = _load()
        assert settings.DATABASE_URL == "sqlite+aiosqlite:///./algoways.db"
        assert (settings.DB_POOL_SIZE, settings.DB_MAX_OVERFLOW) == (32, 8)
        assert (settings.DB_POOL_TIMEOUT, settings.DB_POOL_RECYCLE) == (5, 1800)
        assert settings.DB_POOL_PRE_PING is True
        assert (settings.LOG_LEVEL, settings.LOG_FORMAT) == ("INFO", "text")
        assert settings.TRUSTED_IPS == ()

    @pytest.mark.parametrize(
        "given, expected",
        [
            ("postgresql://u:p@h:5432/d", "postgresql+asyncpg://u:p@h:5432/d"),
            ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
            ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
            ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
        ],
    )
    def test_plain_urls_get_the_async_driver(self, given, expected):
        url = _load(DATABASE_URL=given).DATABASE_URL
        assert url == expected

    def test_service_tokens_and_scopes(self):
        settings = _load()
        assert [(t.name, sorted(t.scopes)) for t in settings.SERVICE_TOKENS] == [
            ("full", ["read", "secrets", "write"]),
            ("rw", ["read", "write"]),
            ("ro", ["read"]),
            ("wo", ["write"]),
        ]
        assert "token" not in repr(settings.SERVICE_TOKENS[0]).replace("ServiceToken", "")

    def test_trusted_ips_are_networks(self):
        settings = _load(TRUSTED_IPS="10.0.0.0/8, 192.168.1.7,::1")
        assert [str(n) for n in settings.TRUSTED_IPS] == ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]

    def test_reads_the_environment(self, monkeypatch):
        monkeypatch.setenv("DB_POOL_SIZE", "3")
        monkeypatch.setenv("LOG_FORMAT", "JSON")
        settings = _load()
        assert settings.DB_POOL_SIZE == 3 and settings.LOG_FORMAT == "json"


class TestBadValues:
    @pytest.mark.parametrize(
        "values, message",
        [
            ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL: unsupported scheme 'mysql'"),
            ({"DB_POOL_SIZE": "-1"}, "DB_POOL_SIZE: Input should be greater than or equal to 1"),
            ({"DB_POOL_TIMEOUT": "0"}, "DB_POOL_TIMEOUT: Input should be greater than 0"),
            ({"API_KEY_PEPPER": "short"}, "API_KEY_PEPPER: must be at least 32 characters"),
            ({"FERNET_SALT": "xyz"}, "FERNET_SALT: must be an even number"),
            ({"SERVICE_TOKENS": "web:tok"}, "SERVICE_TOKENS: each entry must be name:token:scopes"),
            ({"SERVICE_TOKENS": "web:0123456789abcdef0:admin"}, "SERVICE_TOKENS: scopes of 'web'"),
            ({"TRUSTED_IPS": "10.0.0.300"}, "TRUSTED_IPS: '10.0.0.300' is not an IP address"),
            ({"LOG_FORMAT": "xml"}, "LOG_FORMAT: Input should be 'text' or 'json'"),
        ],
    )
    def test_names_the_variable(self, values, message):
        with pytest.raises(ConfigError) as caught:
            _load(**values)
        assert str(caught.value).startswith(message)
        assert "\n" not in str(caught.value)

    def test_missing_required(self):
        with pytest.raises(ConfigError) as caught:
            load_settings(FERNET_SALT=SALT, SERVICE_TOKENS=SERVICE_TOKENS, _env_file=None)
        assert str(caught.value) == "API_KEY_PEPPER: is required but not set"

    def test_start_up_fails_with_one_line(self, tmp_path):
        env = {k: v for k, v in os.environ.items() if k not in {"API_KEY_PEPPER", "DB_POOL_SIZE"}}
        env.update(FERNET_SALT=SALT, SERVICE_TOKENS=SERVICE_TOKENS, API_KEY_PEPPER="too-short")
        result = subprocess.run(
            [sys.executable, "-m", "service", "serve"],
            cwd=tmp_path,  # no .env there
            env={**env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "configuration error: API_KEY_PEPPER: must be at least 32 characters"
        ]


class TestInitEnv:
    def test_writes_fresh_secrets_once(self, tmp_path):
        from service.envfile import init_env

        target = tmp_path / ".env"
        assert init_env(str(target)).startswith("wrote ")
        first = target.read_text()
        assert oct(target.stat().st_mode & 0o777) == "0o600"
        values = dict(line.split("=", 1) for line in first.splitlines() if "=" in line)
        settings = load_settings(_env_file=str(target))
        assert settings.API_KEY_PEPPER.get_secret_value() == values["API_KEY_PEPPER"]
        assert settings.SERVICE_TOKENS[0].scopes == {"read", "write", "secrets"}
        assert init_env(str(target)).startswith("using existing")
        assert target.read_text() == first
