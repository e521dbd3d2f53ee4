"""Settings as one pydantic-settings model (issue 21, item 1): the environment is read by `from_env` only,
the legacy names keep working, the operator's parsing and messages stay, keyword-built settings are typed
but checked only where a process starts, and every field carries what the generated docs table shows."""
from __future__ import annotations

import pydantic
import pytest

from configuration.settings import Settings, SettingsError, setting_reference

KEY = "k" * 16


def test_keyword_settings_never_read_the_process_environment(monkeypatch):
    monkeypatch.setenv("BIND_HOST", "0.0.0.0")
    monkeypatch.setenv("SDXL_PORT", "9000")
    monkeypatch.setenv("WORKER_API_KEY", KEY)
    built = Settings()
    assert (built.bind_host, built.sdxl_port, built.api_key) == ("127.0.0.1", 7859, "")
    read = Settings.from_env()
    assert (read.bind_host, read.sdxl_port, read.api_key) == ("0.0.0.0", 9000, KEY)


def test_legacy_names_are_read_and_a_conflict_refuses_to_start():
    assert Settings.from_env({"CALLBACK_SECRET": "s"}).callback_secret == "s"
    assert Settings.from_env({"JOB_CALLBACK_SECRET": "", "CALLBACK_SECRET": "s"}).callback_secret == "s"
    assert Settings.from_env({"JOB_CALLBACK_SECRET": "s", "CALLBACK_SECRET": "s"}).callback_secret == "s"
    assert Settings.from_env({"SUPABASE_SERVICE_ROLE_KEY": "r"}).supabase_service_key == "r"
    with pytest.raises(SettingsError, match="^CALLBACK_SECRET and JOB_CALLBACK_SECRET are the same setting"):
        Settings.from_env({"JOB_CALLBACK_SECRET": "a", "CALLBACK_SECRET": "b"})


def test_text_is_parsed_with_the_operators_words_and_messages():
    on = Settings.from_env({"TORCH_COMPILE": " On ", "PROVENANCE_SIDECAR": "no", "SUPABASE_BUCKET": "",
                            "OUTPUT_DIR": "/data/out", "MAX_BODY_MB": "2.5", "RESTART_LIMIT": "7"})
    assert (on.torch_compile, on.provenance_sidecar, on.supabase_bucket) == (True, False, "")
    assert (str(on.output_dir), on.max_body_mb, on.restart_limit) == ("/data/out", 2.5, 7)
    empty = Settings.from_env({"TORCH_COMPILE": "", "PROVENANCE_SIDECAR": "", "RESTART_LIMIT": "", "OUTPUT_DIR": ""})
    assert (empty.torch_compile, empty.provenance_sidecar, empty.restart_limit) == (False, None, 5)
    assert str(empty.output_dir) == "outputs"
    for env, message in (({"RESTART_LIMIT": "5.5"}, "RESTART_LIMIT must be an integer, got '5.5'"),
                         ({"MAX_BODY_MB": "ten"}, "MAX_BODY_MB must be a number, got 'ten'"),
                         ({"WAN_OFFLOAD": "maybe"}, "WAN_OFFLOAD must be a boolean (true/false), got 'maybe'")):
        with pytest.raises(SettingsError) as refused:
            Settings.from_env(env)
        assert str(refused.value) == message


def test_keywords_are_typed_but_checked_only_where_a_process_starts():
    public = Settings(bind_host="0.0.0.0")  # built as given: tests exercise one part with such settings
    with pytest.raises(SettingsError, match="WORKER_API_KEY is not set"):
        public.check()
    Settings(bind_host="0.0.0.0", api_key=KEY).check()
    with pytest.raises(SettingsError, match="^SDXL_PORT must be an integer, got 'abc'$"):
        Settings(sdxl_port="abc")
    with pytest.raises(SettingsError, match="^SDXL_PORT: "):
        Settings(sdxl_port=1.5)
    with pytest.raises(SettingsError, match="^not_a_setting: Extra inputs are not permitted"):
        Settings(not_a_setting=1)


def test_settings_are_frozen_values():
    assert Settings(api_key=KEY) == Settings(api_key=KEY) != Settings()
    assert hash(Settings(api_key=KEY)) == hash(Settings(api_key=KEY))
    assert Settings().replace(sdxl_port=1) == Settings(sdxl_port=1)
    with pytest.raises(pydantic.ValidationError):
        Settings().bind_host = "0.0.0.0"


def test_every_setting_is_one_field_with_its_variable_and_description():
    reference = setting_reference()
    assert len(reference) == len(Settings.model_fields)
    assert all(s.name.isupper() and s.description for s in reference)
    assert len({s.name for s in reference}) == len(reference)
