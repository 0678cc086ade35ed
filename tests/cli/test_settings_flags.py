"""`gpt2-serve serve` flags are generated from the settings object: every field has one, with its
description and ``GPT2_*`` variable in the help; a flag wins over the variable, an absent flag lets
the variable through; the flag names the tests and README use keep working."""

from __future__ import annotations

import argparse
import re

import pytest

from app.cli.main import build_parser
from app.cli.settings_flags import env_name, flag_name, settings_from_args
from app.server.settings import Settings


def serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_every_settings_field_has_a_flag_in_help():
    help_text = re.sub(r"\s+", " ", serve_parser().format_help())
    options = {s for a in serve_parser()._actions for s in a.option_strings}
    for name in Settings.model_fields:
        assert flag_name(name) in options, f"settings field {name} has no serve flag"
        assert flag_name(name) in help_text and env_name(name) in help_text
    assert len(Settings.model_fields) >= 23  # the generator saw the whole object


def test_every_settings_field_is_described():
    # The flag's help is the field's description: a field added without one reads badly in --help.
    missing = [n for n, f in Settings.model_fields.items() if not (f.description or "").strip()]
    assert missing == []


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["--models", "a,b"], "models", ["a", "b"]),
        (["--models-dir", "/srv/m"], "models_dir", "/srv/m"),
        (["--models", "a,b", "--placement", "a=CPU:0,b=CPU:0"], "placement", {"a": "CPU:0", "b": "CPU:0"}),
        (["--dtype", "bfloat16"], "dtype", "bfloat16"),
        (["--cpu-devices", "2"], "cpu_devices", 2),
        (["--slots", "3"], "slots", 3),
        (["--queue-size", "0"], "queue_size", 0),
        (["--host", "0.0.0.0"], "host", "0.0.0.0"),
        (["--port", "9001"], "port", 9001),
        (["--cors-origins", "https://x.example"], "cors_origins", ["https://x.example"]),
        (["--default-max-new-tokens", "7"], "default_max_new_tokens", 7),
        (["--max-new-tokens-limit", "4000"], "max_new_tokens_limit", 4000),
        (["--drain-timeout", "2.5"], "drain_timeout", 2.5),
        (["--no-warmup"], "warmup", False),
        (["--protect-metrics"], "protect_metrics", True),
        (["--health-stuck-seconds", "9"], "health_stuck_seconds", 9.0),
        (["--max-buffered-tokens", "8"], "max_buffered_tokens", 8),
    ],
)
def test_flags_set_their_field(argv, field, expected, monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)
    value = getattr(settings_from_args(parse(*argv)), field)
    assert (str(value) if field == "models_dir" else value) == expected


def test_api_keys_flag():
    settings = settings_from_args(parse("--api-keys", "k1,k2"))
    assert [k.get_secret_value() for k in settings.api_keys] == ["k1", "k2"]


def test_flag_wins_over_environment_and_environment_fills_the_rest(monkeypatch):
    monkeypatch.setenv("GPT2_PORT", "7000")
    monkeypatch.setenv("GPT2_QUEUE_SIZE", "5")
    monkeypatch.setenv("GPT2_WARMUP", "false")
    settings = settings_from_args(parse("--port", "7001", "--warmup"))
    assert settings.port == 7001 and settings.warmup is True  # flags win
    assert settings.queue_size == 5  # no flag: the variable


def test_bad_flag_value_is_one_line_naming_the_setting(monkeypatch):
    monkeypatch.delenv("GPT2_PORT", raising=False)
    with pytest.raises(ValueError, match=r"^setting port: ") as info:
        settings_from_args(parse("--port", "70000"))
    assert "\n" not in str(info.value)


def test_literal_settings_offer_their_choices():
    with pytest.raises(SystemExit):
        parse("--dtype", "int8")


def test_serve_bad_value_exits_2_with_one_line(capsys, monkeypatch):
    from app.cli.main import main

    monkeypatch.delenv("GPT2_SLOTS", raising=False)
    assert main(["serve", "--slots", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpt2-serve serve: error: setting slots:") and "\n" not in err


def test_the_renamed_buffer_variable_is_refused_with_its_new_name(monkeypatch):
    """GPT2_WS_MAX_BUFFERED_TOKENS became GPT2_MAX_BUFFERED_TOKENS (it bounds SSE streams too);
    pydantic-settings would ignore the old name silently."""
    monkeypatch.setenv("GPT2_WS_MAX_BUFFERED_TOKENS", "8")
    with pytest.raises(ValueError, match="renamed GPT2_MAX_BUFFERED_TOKENS"):
        Settings()
    monkeypatch.delenv("GPT2_WS_MAX_BUFFERED_TOKENS")
    monkeypatch.setenv("GPT2_MAX_BUFFERED_TOKENS", "8")
    assert Settings().max_buffered_tokens == 8
