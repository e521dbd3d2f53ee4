"""Settings, schemas and SDXL normalisation: pure logic, including property-based checks."""
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from configuration import job_types, model_config, preset_defaults, requests
from configuration.requests import schema_of, schemas
from configuration.requests.common import ValidationFailed, validate
from configuration.settings import Settings, SettingsError, documented_variables

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings():
    """Pure-logic tests: no models needed."""
    return Settings()


def body(**overrides):
    b = {"id": "j1", "type": "sdxl_image_fast", "prompt": "a red fox", "user_id": "u1", "config": {"seed": 7}}
    b.update(overrides)
    return b


def admitted(b, settings):
    """Validated then normalised, as a worker admits a body: a refusal may come from either step."""
    return requests.normalise("sdxl.generate", b, settings)


def details(exc_info):
    return {d["path"]: d["message"] for d in exc_info.value.details}


def test_settings_defaults_and_profile_detection():
    s = Settings.from_env({})
    assert (s.orchestrator_port, s.sdxl_port, s.wan_port, s.chat_port) == (7858, 7859, 7860, 7861)
    assert s.model_profile == "placeholder"
    assert s.bind_host == "127.0.0.1"
    assert Settings.from_env({"SDXL_MODEL_PATH": "/m/x.safetensors"}).model_profile == "production"
    assert Settings.from_env({"SUPABASE_URL": "https://p.supabase.co"}).effective_callback_url == \
        "https://p.supabase.co/functions/v1/job-callback"
    assert Settings.from_env({"SUPABASE_URL": "https://p",
                              "CALLBACK_URL": "http://x/cb"}).effective_callback_url == "http://x/cb"
    assert Settings.from_env({}).effective_callback_url == ""


def test_settings_refuse_public_bind_without_key_and_bad_values():
    with pytest.raises(SettingsError, match="WORKER_API_KEY"):
        Settings.from_env({"BIND_HOST": "0.0.0.0"})
    assert Settings.from_env({"BIND_HOST": "0.0.0.0", "WORKER_API_KEY": "k" * 16}).bind_host == "0.0.0.0"
    with pytest.raises(SettingsError, match="SDXL_PORT"):
        Settings.from_env({"SDXL_PORT": "abc"})
    with pytest.raises(SettingsError, match="MODEL_PROFILE"):
        Settings.from_env({"MODEL_PROFILE": "staging"})


def test_secrets_not_in_settings_repr():
    s = Settings.from_env({"WORKER_API_KEY": "sekrit-1", "SUPABASE_SERVICE_KEY": "sekrit-2",
                           "CALLBACK_SECRET": "sekrit-3"})
    assert "sekrit" not in repr(s)


def test_every_setting_is_documented():
    doc = (REPO / "docs" / "CONFIGURATION.md").read_text()
    for name in documented_variables():
        assert f"`{name}`" in doc, f"{name} missing from docs/CONFIGURATION.md"


def test_check_refuses_unknown_workers_and_single_files_without_a_config_dir(tmp_path):
    from configuration.check import problems

    assert problems(Settings(enabled_workers="sdxl,foo")) == [
        "ENABLED_WORKERS names unknown workers ['foo']; known: ['chat', 'sdxl', 'wan']"]
    checkpoint = tmp_path / "sdxl.safetensors"
    checkpoint.write_bytes(b"")
    production = {"model_profile": "production", "enabled_workers": "sdxl", "sdxl_model_path": str(checkpoint)}
    assert [p.split(" is ")[1] for p in problems(Settings(**production))] == [
        "a single-file checkpoint and needs SDXL_CONFIG_DIR, a local diffusers config directory "
        "(or one in a config/ folder next to the file)"]
    missing = tmp_path / "nothing"
    assert problems(Settings(**production, sdxl_config_dir=str(missing))) == [
        f"sdxl: config directory {missing} has no model_index.json"]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "model_index.json").write_text("{}")
    assert problems(Settings(**production)) == []  # the config/ folder next to the checkpoint


FAMILIES = {"sdxl", "wan", "chat", "memory", "orchestrator"}


@pytest.mark.parametrize("profile", ["placeholder", "production"])
def test_all_schemas_are_valid_draft_2020_12(profile):
    """Every family's schemas are there (none skipped), declare draft 2020-12, are valid against its
    metaschema in both profiles, and refuse a body that is not an object with the root path."""
    import jsonschema

    from configuration.requests.common import DIALECT

    built = schemas(Settings(model_profile=profile))
    assert {name.split(".", 1)[0] for name in built} == FAMILIES
    for name, schema in built.items():
        assert schema.get("$schema") == DIALECT, name
        assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator, name
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object", name
        with pytest.raises(ValidationFailed) as exc:
            requests.check(name, [], Settings(model_profile=profile))
        assert [d["path"] for d in exc.value.details] == [""], name


def test_presets_fill_only_what_is_missing(settings):
    p = requests.normalise("sdxl.generate", body(), settings)
    assert (p["steps"], p["guidance_scale"], p["num_images"], p["seed"]) == (15, 6.0, 1, 7)
    assert (p["width"], p["height"]) == (64, 64)  # placeholder profile's native size
    high = requests.normalise("sdxl.generate", body(type="sdxl_image_high", config={"steps": 9}), settings)
    assert (high["steps"], high["guidance_scale"]) == (9, 7.5)
    assert preset_defaults("sdxl_image_high", Settings(model_profile="production"))["width"] == 1024


def test_seed_zero_is_a_seed_and_missing_seed_is_random_and_reported(settings):
    assert requests.normalise("sdxl.generate", body(config={"seed": 0}), settings)["seed"] == 0
    p = requests.normalise("sdxl.generate", body(config={}), settings)
    assert p["seed_source"] == "random"
    assert 0 <= p["seed"] < 2**32


def test_legacy_sdxl_fields(settings):
    p = requests.normalise("sdxl.generate", body(config={"num_inference_steps": 12, "resolution": "128x64"},
                                                 metadata={"reference_image_url": "https://x/y.png",
                                                           "reference_strength": 0.7}), settings)
    assert (p["steps"], p["width"], p["height"]) == (12, 128, 64)
    assert p["reference"]["denoise_strength"] == pytest.approx(0.3)
    assert p["reference"]["strength_source"] == "reference_strength"


def test_exact_copy_takes_preset_strength_and_guidance(settings):
    p = requests.normalise("sdxl.generate",
                           body(metadata={"reference_image_url": "https://x/y.png", "exact_copy_mode": True}), settings)
    assert p["reference"]["mode"] == "exact_copy"
    assert p["reference"]["denoise_strength"] == job_types()["sdxl_image_fast"]["exact_copy"]["denoise_strength"]
    assert p["guidance_scale"] == 1.0


@pytest.mark.parametrize(("bad", "path"), [
    ({"prompt": None}, "/prompt"),
    ({"prompt": "   "}, "/prompt"),
    ({"type": "sdxl_image_ultra"}, "/type"),
    ({"config": {"steps": 0}}, "/config/steps"),
    ({"config": {"steps": 101}}, "/config/steps"),
    ({"config": {"steps": "20"}}, "/config/steps"),
    ({"config": {"num_images": 2}}, "/config/num_images"),
    ({"config": {"width": 65}}, "/config/width"),
    ({"config": {"resolution": "4096x4096"}}, "/config/resolution"),    # bounds of the profile, in the schema
    ({"config": {"resolution": "100x64"}}, "/config/resolution"),
    ({"config": {"seed": -(2**53)}}, "/config/seed"),               # beyond what a JavaScript number holds exactly
    ({"config": {"seed": 2**53}}, "/config/seed"),
    ({"config": {"seed": 1.5}}, "/config/seed"),
    ({"config": {"bogus": 1}}, "/config/bogus"),
    ({"metadata": {"denoise_strength": 1.5, "reference_image_url": "https://x"}}, "/metadata/denoise_strength"),
    ({"metadata": {"reference_image_url": "ftp://x/y.png"}}, "/metadata/reference_image_url"),
    ({"id": "../etc"}, "/id"),
    ({"user_id": "a/b"}, "/user_id"),
])
def test_schema_errors_name_the_field(settings, bad, path):
    b = body(**bad)
    if bad.get("prompt", "") is None:
        del b["prompt"]
    with pytest.raises(ValidationFailed) as exc:
        admitted(b, settings)
    assert path in details(exc)


@pytest.mark.parametrize("profile", ["placeholder", "production"])
def test_preset_defaults_are_within_the_schema_bounds(profile):
    """Normalisation trusts the presets it fills in: the schema (the one place bounds live) must accept them."""
    settings = Settings(model_profile=profile)
    for job_type, entry in job_types().items():
        defaults = preset_defaults(job_type, settings)
        validate(schema_of(f"{entry['worker']}.generate", settings), body(type=job_type, config=defaults))
    with pytest.raises(ValidationFailed):  # and would refuse one out of bounds
        validate(schema_of("sdxl.generate", settings),
                 body(config={**preset_defaults("sdxl_image_fast", settings), "width": 4096}))


@pytest.mark.parametrize(("config", "path"), [
    ({"resolution": "64x64", "width": 128}, "/config/width"),
    ({"steps": 10, "num_inference_steps": 12}, "/config/num_inference_steps"),
])
def test_normalisation_errors_name_the_field(settings, config, path):
    b = body(config=config)
    validate(schema_of("sdxl.generate", settings), b)  # the published schema accepts it; a cross-field rule does not
    with pytest.raises(ValidationFailed) as exc:
        requests.normalise("sdxl.generate", b, settings)
    assert path in details(exc)


def test_reference_fields_need_a_reference(settings):
    b = body(metadata={"denoise_strength": 0.4})
    with pytest.raises(ValidationFailed) as exc:
        requests.normalise("sdxl.generate", b, settings)
    assert "/metadata/denoise_strength" in details(exc)


def test_caller_metadata_is_kept(settings):
    p = requests.normalise("sdxl.generate", body(metadata={"reference_type": "style", "credits": 3,
                                                           "reference_image_url": "https://x/y.png"}), settings)
    assert p["caller_metadata"] == {"reference_type": "style", "credits": 3}


_limits = model_config("sdxl", Settings())["limits"]


def _integral(value) -> bool:
    """What JSON Schema calls an integer: an int, or a float with no fractional part (not a bool)."""
    return not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and value.is_integer()))


def _expected_sdxl_errors(config: dict) -> set[str]:
    """The fields a config must be refused for, from the documented bounds alone (an oracle independent of
    the schema and the normaliser)."""
    def bad(name, ok):
        return {f"/config/{name}"} if name in config and not ok(config[name]) else set()

    return (bad("steps", lambda v: _integral(v) and 1 <= v <= 100)
            | bad("num_images", lambda v: v in (1, 3, 6))
            | bad("width", lambda v: _limits["min_size"] <= v <= _limits["max_size"] and v % _limits["multiple"] == 0)
            | bad("seed", lambda v: _integral(v) and -(2**53 - 1) <= v <= 2**53 - 1)
            | bad("guidance_scale", lambda v: 0 <= v <= 30))


@hsettings(max_examples=150, deadline=None)
@given(steps=st.one_of(st.integers(-5, 130), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3),
                       st.none()),
       num_images=st.one_of(st.integers(0, 8), st.none()),
       width=st.one_of(st.integers(0, 300), st.none()),
       seed=st.one_of(st.integers(-2, 2**32 + 2), st.integers(-(2**53) - 2, 2**53 + 2), st.none()),
       guidance=st.one_of(st.floats(-1, 40, allow_nan=False), st.none()))
def test_property_accepted_bodies_normalise_within_bounds(steps, num_images, width, seed, guidance):
    """A body is accepted exactly when every field is inside its documented range, and then normalises to
    parameters inside those ranges; a refused body names only fields that are out of range."""
    s = Settings()
    config = {k: v for k, v in {"steps": steps, "num_images": num_images, "width": width, "seed": seed,
                                "guidance_scale": guidance}.items() if v is not None}
    expected = _expected_sdxl_errors(config)
    b = body(config=config)
    try:
        p = requests.normalise("sdxl.generate", b, s)
    except ValidationFailed as exc:
        paths = {d["path"] for d in exc.details}
        assert expected, f"in-range config {config} refused: {exc.details}"  # noqa: PT017 (the oracle says refused or accepted)
        assert paths, f"{config}: refused at {paths}, out of range: {expected}"
        assert paths <= expected, f"{config}: refused at {paths}, out of range: {expected}"
        return
    assert not expected, f"{config} accepted; out of range: {expected}"
    assert 1 <= p["steps"] <= 100
    assert isinstance(p["steps"], int)
    assert p["num_images"] in (1, 3, 6)
    assert _limits["min_size"] <= p["width"] <= _limits["max_size"]
    assert p["width"] % _limits["multiple"] == 0
    assert 0 <= p["seed"] < 2**32
    if seed is not None:  # reduced to the generators' range, deterministically; the sent seed reported when it differs
        assert p["seed"] == seed % 2**32
        assert p.get("seed_requested", seed) == seed
    assert 0 <= p["guidance_scale"] <= 30
