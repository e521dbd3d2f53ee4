"""The configuration files are read once into read-only structures every caller shares (configuration/__init__.py).

Normalising a request used to deep-copy presets.json on every call (issue 21: 97 % of its cost); now the
accessors hand out the same read-only data, so a caller that changed it would change it for everyone: it
must be refused, and a caller's own copy must stay a plain, mutable dict.
"""
from __future__ import annotations

import copy
import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from configuration import (
    FrozenDict,
    FrozenList,
    chat_config,
    freeze,
    job_types,
    model_config,
    model_configs,
    preset_defaults,
    thaw,
    worker_config,
    worker_configs,
)
from configuration.settings import Settings


def test_accessors_share_one_copy_per_file():
    settings = Settings()
    assert job_types() is job_types()
    assert job_types("sdxl") is job_types("sdxl")
    assert chat_config() is chat_config()
    assert worker_configs() is worker_configs()
    assert model_configs() is model_configs()
    assert worker_config("sdxl") is worker_configs()["sdxl"]
    assert preset_defaults("sdxl_image_fast", settings) is preset_defaults("sdxl_image_fast", Settings())
    assert model_config("sdxl", settings) is model_config("sdxl", Settings())


def test_settings_that_change_a_model_config_give_their_own():
    placeholder = model_config("sdxl", Settings(placeholder_models_dir="/a"))
    assert placeholder["path"].startswith("/a/")
    assert model_config("sdxl", Settings(placeholder_models_dir="/b"))[
        "path"].startswith("/b/")
    production = model_config("sdxl", Settings(model_profile="production", sdxl_model_path="/m/x.safetensors"))
    assert production["path"] == "/m/x.safetensors"
    assert production["limits"] != placeholder["limits"]
    assert preset_defaults("sdxl_image_high", Settings(model_profile="production"))["width"] == 1024
    assert preset_defaults("sdxl_image_high", Settings())["width"] != 1024


@pytest.mark.parametrize("change", [
    lambda d: d.__setitem__("x", 1), lambda d: d.pop("sdxl_image_fast"), lambda d: d.update(x=1),
    lambda d: d.setdefault("x", 1), lambda d: d.clear(), lambda d: d.popitem(),
    lambda d: d.__delitem__("sdxl_image_fast"), lambda d: d["sdxl_image_fast"].__setitem__("worker", "wan"),
    lambda d: d["sdxl_image_fast"]["defaults"].update(steps=1),
])
def test_shared_presets_refuse_changes(change):
    with pytest.raises(TypeError, match="read-only"):
        change(job_types())
    assert job_types()["sdxl_image_fast"]["worker"] == "sdxl"


@pytest.mark.parametrize("change", [
    lambda values: values.append("x"), lambda values: values.extend(["x"]), lambda values: values.insert(0, "x"),
    lambda values: values.__setitem__(0, "x"), lambda values: values.__delitem__(0), lambda values: values.sort(),
    lambda values: values.pop(), lambda values: values.remove(values[0]), lambda values: values.reverse(),
])
def test_shared_lists_refuse_changes(change):
    models = worker_config("wan")["models"]
    assert isinstance(models, FrozenList)
    with pytest.raises(TypeError, match="read-only"):
        change(models)
    assert worker_config("wan")["models"] == ["wan_t2v", "wan_vace"]


def test_a_callers_copy_is_plain_and_mutable():
    presets = job_types()
    for mine in (copy.deepcopy(presets), thaw(presets)):
        assert type(mine) is dict
        assert type(mine["sdxl_image_fast"]) is dict
        assert mine == presets
        mine["sdxl_image_fast"]["defaults"]["steps"] = 1
    shallow = {**presets["sdxl_image_fast"]["defaults"], "steps": 1}
    assert shallow["steps"] == 1
    assert presets["sdxl_image_fast"]["defaults"]["steps"] != 1
    assert json.loads(json.dumps(chat_config())) == chat_config()
    assert pickle.loads(pickle.dumps(worker_configs())) == worker_configs()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=4), max_leaves=20)


@given(json_values)
def test_freeze_keeps_the_data_and_thaw_gives_it_back(value):
    frozen = freeze(value)
    assert frozen == value
    assert json.dumps(frozen, sort_keys=True) == json.dumps(value, sort_keys=True)
    assert thaw(frozen) == value
    if isinstance(value, dict):
        assert isinstance(frozen, FrozenDict)
        assert type(thaw(frozen)) is dict
