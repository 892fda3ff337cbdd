"""Settings: one model, and every setting a flag, an environment variable and a file key."""

from __future__ import annotations

import argparse
import json
import logging
import tomllib
from pathlib import Path

import pytest

from teleconsult.cli import build_parser, main
from teleconsult.signaling.config import ENV_PREFIX, MASK, Settings, load_settings
from teleconsult.signaling.logs import configure_logging


def shown(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    """Run `teleconsult config ARGV` and read what it prints as TOML."""
    assert main(["config", *argv]) == 0
    return tomllib.loads(capsys.readouterr().out)


def test_flag_beats_environment_beats_file_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "teleconsult.toml"
    file.write_text('node_ttl = 4.5\nidle_timeout = 30\nport = 9001\nhost = "0.0.0.0"\n')
    monkeypatch.setenv(ENV_PREFIX + "IDLE_TIMEOUT", "40")
    monkeypatch.setenv(ENV_PREFIX + "PORT", "9002")
    got = shown(capsys, "--config", str(file), "--port", "9003")
    assert got["port"] == 9003  # the flag
    assert got["idle_timeout"] == 40.0  # the environment over the file
    assert (got["node_ttl"], got["host"]) == (4.5, "0.0.0.0")  # the file over the defaults
    assert got["queue_size"] == Settings.model_fields["queue_size"].default


def test_every_setting_has_a_flag_a_variable_and_a_file_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    flags = {o for a in serve._actions for o in a.option_strings}
    numbers = {name: f for name, f in Settings.model_fields.items() if f.annotation in (int, float)}
    assert len(Settings.model_fields) >= 36 and len(numbers) >= 20
    for name, field in Settings.model_fields.items():
        assert f"--{(field.alias or name).replace('_', '-')}" in flags, name
    # Every number, set three ways to three values: each way reaches the setting.
    file = tmp_path / "all.toml"
    file.write_text("".join(f"{n} = {f.default + 1}\n" for n, f in numbers.items()))
    from_file = load_settings(file)
    for name, field in numbers.items():
        monkeypatch.setenv(ENV_PREFIX + name.upper(), str(field.default + 2))
    from_env = load_settings(file)
    flags_given = [
        x for n, f in numbers.items() for x in (f"--{n.replace('_', '-')}", str(f.default + 3))
    ]
    from_flags = shown(capsys, "--config", str(file), *flags_given)
    for name, field in numbers.items():
        assert getattr(from_file, name) == field.default + 1, name
        assert getattr(from_env, name) == field.default + 2, name
        assert from_flags[name] == field.default + 3, name


def test_config_prints_a_file_that_loads_back_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    got = shown(
        capsys,
        "--secret", "s3cret-s3cret", "--admin-key", "k3y", "--turn-secret", "t",
        "--redis", "redis://app:pa55@redis.hospital.internal:6379/0",
        "--turn-url", "turn:a.example.org:3478", "--turn-url", "turns:a.example.org:5349",
        "--turn-port", "-1", "--retention-days", "30",
    )  # fmt: skip
    assert (got["secret"], got["admin_key"], got["turn_secret"]) == (MASK, MASK, MASK)
    assert got["redis"] == f"redis://app:{MASK}@redis.hospital.internal:6379/0"
    printed = capsys.readouterr().out + json.dumps(got)
    assert "s3cret" not in printed and "pa55" not in printed and "k3y" not in printed
    file = tmp_path / "printed.toml"
    file.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in got.items()))
    again = load_settings(file)
    assert again.turn_urls == ["turn:a.example.org:3478", "turns:a.example.org:5349"]
    assert again.turn_port is None and again.retention_days == 30.0


def test_a_bad_setting_is_named_and_nothing_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "typo.toml"
    file.write_text("node_tll = 4\n")
    assert main(["config", "--config", str(file)]) == 2
    assert "bad settings: node_tll: Extra inputs are not permitted" in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "no such configuration file" in capsys.readouterr().err
    assert main(["serve", "--log-format", "xml"]) == 2
    assert "log_format: Input should be 'text' or 'json'" in capsys.readouterr().err


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        configure_logging("info", "json")
        logging.getLogger("teleconsult.test").info("room %s opened", "r1")
        logging.getLogger("teleconsult.test").debug("not written at info")
        logging.getLogger("aioice.ice").info("Check CandidatePair(...) State.WAITING")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("uvicorn.error").exception("failed")
    finally:
        root.handlers[:], root.level = before
        for name in ("aioice", "aiortc"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert [(x["level"], x["logger"], x["message"]) for x in lines] == [
        ("info", "teleconsult.test", "room r1 opened"),
        ("error", "uvicorn.error", "failed"),
    ]
    assert "RuntimeError: boom" in lines[1]["error"] and lines[0]["time"].endswith("Z")
