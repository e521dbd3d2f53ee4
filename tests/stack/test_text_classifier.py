"""The text classifier (workers/runtime/text_safety.py), the second opinion next to the word rules, with the
placeholder classifier loaded by the same from_pretrained code as the production one.

The placeholder's sexual_explicit probability stays near 0.1 for any text (workers/placeholders/text_safety.py):
at the default threshold (0.5) everything passes; TEXT_SAFETY_THRESHOLD=0.01 makes it read every text as
sexual, so what is refused then shows the decision rules: in sfw every text, in nsfw only a text where the
word rules see a minor (the floor), on the generation path (HTTP and a queued job) and the chat path.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common import policy
from common.errors import ContentPolicyRefused
from configuration import ConfigurationError
from configuration.settings import Settings
from tests.stack.test_policy_paths import _post, assert_policy_refusal, chat_app, scripted  # noqa: F401 (fixtures)
from workers.runtime import admission, text_safety

LOW = 0.01  # below the placeholder's band: every text reads as sexual


@pytest.fixture
def placeholder_settings(placeholder_dir) -> Settings:
    return Settings(placeholder_models_dir=placeholder_dir)


def test_the_placeholder_loads_like_the_production_model_and_passes_at_the_default_threshold(placeholder_settings):
    classifier = text_safety.for_settings(placeholder_settings)
    assert classifier is not None
    assert classifier.path.endswith("text-safety-classifier")
    result = text_safety.check_text(placeholder_settings, "a lighthouse at dusk", tier="sfw", stage="prompt")
    assert classifier.scheme["name"] == "detoxify-multilingual"
    assert classifier.scheme["activation"] == "sigmoid"
    assert result.outcome == "allowed"
    assert 0.05 < result.scores[policy.EXPLICIT] < 0.15
    assert result.public() == {"check": "text_classifier", "stage": "prompt", "tier": "sfw", "outcome": "allowed",
                               "scores": {policy.EXPLICIT: round(result.scores[policy.EXPLICIT], 4)},
                               "threshold": 0.5, "segments": 1}


@pytest.mark.parametrize(("text", "tier", "stage", "expected"), [
    ("a lighthouse at dusk", "sfw", "prompt", (policy.EXPLICIT, "classifier_explicit")),
    ("a lighthouse at dusk", "nsfw", "prompt", None),
    ("a child flying a kite", "nsfw", "prompt", (policy.FLOOR, "classifier_minor_context")),
    ("she is 15 years old", "nsfw", "chat_input", (policy.FLOOR, "classifier_minor_context")),
    # a language model reads negation: the app's guardrail sentence is no minor in the scene
    ("Never involve minors. Two adults in a hotel room.", "nsfw", "chat_input", None),
    # an image model does not: the same words are a minor in the picture
    ("no children, two adults in a hotel room", "nsfw", "prompt", (policy.FLOOR, "classifier_minor_context")),
])
def test_a_low_threshold_shows_the_decision_rules(placeholder_settings, text, tier, stage, expected):
    result = text_safety.check_text(placeholder_settings.replace(text_safety_threshold=LOW), text, tier=tier,
                                    stage=stage)
    assert ((result.category, result.rule) if result.flagged else None) == expected, result
    if expected:
        with pytest.raises(ContentPolicyRefused) as raised:
            text_safety.require(result)
        assert type(raised.value) is ContentPolicyRefused


def test_a_minor_far_from_the_text_the_model_reads_as_sexual_is_judged_per_segment(placeholder_settings):
    # 25-word segments at chat stages: the child in the first sentence and a segment 60 words later are not one
    # scene for the pairing, but the low threshold reads every segment as sexual, so the first one pairs.
    filler = " ".join(["the", "ship", "sails", "on"] * 15)
    text = f"my child is asleep. {filler}"
    assert len(text_safety.segments(text, policy.window_words("chat_input"))) > 2
    low = placeholder_settings.replace(text_safety_threshold=LOW)
    assert text_safety.check_text(low, text, tier="nsfw", stage="chat_input").flagged
    assert not text_safety.check_text(low, filler, tier="nsfw", stage="chat_input").flagged


def test_segments_cover_the_text_half_overlapping():
    words = [str(i) for i in range(70)]
    parts = text_safety.segments(" ".join(words), 25)
    assert parts[0].split()[0] == "0"
    assert parts[-1].split()[-1] == "69"
    assert all(len(p.split()) == 25 for p in parts)
    assert text_safety.segments("", 25) == []
    assert text_safety.segments("one two", 25) == ["one two"]


def test_a_text_longer_than_the_model_reads_is_scored_in_token_windows(placeholder_settings):
    classifier = text_safety.for_settings(placeholder_settings)
    unspaced = "猫在窗户上睡觉" * 60  # one "word" of 420 characters: one segment, several token windows
    [scored] = classifier.scores([unspaced])
    assert classifier.max_tokens == 128
    assert 0.05 < scored[policy.EXPLICIT] < 0.15


def test_a_conversations_history_is_scored_once(placeholder_settings):
    classifier = text_safety.for_settings(placeholder_settings)
    classifier.clear_cache()
    history = " ".join(f"turn {i}: the crew asks which course to take past the reefs." for i in range(12))
    first = classifier.check(history, "sfw", "chat_input")
    scored = set(classifier._cache)
    assert len(scored) == first.segments > 2
    following = classifier.check(history + " turn 12: to port.", "sfw", "chat_input")
    new = set(classifier._cache) - scored
    assert 0 < len(new) < following.segments  # only the segments the new message reaches were scored
    size = len(classifier._cache)
    assert classifier.check(history, "sfw", "chat_input").scores == first.scores
    assert len(classifier._cache) == size


def test_nothing_configured_is_recorded_as_not_run():
    settings = Settings(model_profile="production")
    assert text_safety.classifier_path(settings) == ""
    before = policy.decision_counts().get(("not_run", "none", "chat_input", "nsfw"), 0)
    result = text_safety.check_text(settings, "hello", tier="nsfw", stage="chat_input")
    assert result.outcome == "not_run"
    assert not result.flagged
    assert result.public() == {"check": "text_classifier", "stage": "chat_input", "tier": "nsfw", "outcome": "not_run",
                               "reason": "no text classifier configured (TEXT_SAFETY_CLASSIFIER_PATH)"}
    assert policy.decision_counts()[("not_run", "none", "chat_input", "nsfw")] == before + 1
    # a generation job's record lists it next to the word rules' check
    params = {"content_tier": "nsfw", admission.CONTENT_CHECKS: [policy.Decision(True, "prompt", "nsfw").public(),
                                                                 result.public()], "seed": 1}
    metadata = admission.job_metadata({"prompt": "hello"}, params)
    assert [c["check"] for c in metadata["content_policy"]["checks"]] == ["text", "text_classifier"]
    assert metadata["content_policy"]["checks"][1]["outcome"] == "not_run"
    assert admission.CONTENT_CHECKS not in params
    assert "content_policy_checks" not in metadata["parameters"]


def test_the_setting_points_at_any_folder_and_unknown_labels_are_refused_at_load(placeholder_dir, tmp_path):
    from workers.placeholders import placeholder_paths

    folder = tmp_path / "text-classifier"
    shutil.copytree(placeholder_paths(placeholder_dir)["text_safety_classifier"], folder)
    settings = Settings(model_profile="production", text_safety_classifier_path=str(folder))
    assert text_safety.classifier_path(settings) == str(folder)
    assert text_safety.check_text(settings, "a lighthouse", tier="sfw", stage="prompt").outcome == "allowed"

    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): f"topic_{i}" for i in range(16)}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigurationError, match="matches no label scheme"):
        text_safety.TextClassifier(str(folder), 0.5).load()


def test_a_stage_the_classifier_does_not_read_is_an_error(placeholder_settings):
    with pytest.raises(ValueError, match="does not run at stage"):
        text_safety.check_text(placeholder_settings, "x", tier="sfw", stage="output")


# ---- the chat path (the chat worker's app in-process, the model's text scripted) ---------------------------

@pytest.fixture
def low_threshold(chat_app, monkeypatch):  # noqa: F811
    _app, state = chat_app
    monkeypatch.setattr(state, "settings", state.settings.replace(text_safety_threshold=LOW))


def test_chat_lists_the_classifier_checks_at_the_default_threshold(chat_app, scripted):  # noqa: F811
    scripted("The harbour is quiet tonight.")
    answer = _post(chat_app, "/chat", {"messages": [{"role": "user", "content": "Describe the harbour."}],
                                       "content_tier": "sfw"}).get_json()
    assert answer["response"] == "The harbour is quiet tonight."
    assert [(c["stage"], c["outcome"]) for c in answer["content_policy"]["checks"]] == [
        ("chat_input", "allowed"), ("chat_output", "allowed")]


def test_chat_input_the_classifier_flags_is_refused(chat_app, scripted, low_threshold):  # noqa: F811
    scripted("never sent")
    body = {"messages": [{"role": "user", "content": "Describe the harbour."}], "content_tier": "sfw"}
    refused = assert_policy_refusal(_post(chat_app, "/chat", body), policy.EXPLICIT)
    assert refused["error"]["details"][0]["stage"] == "chat_input"
    floor = {"messages": [{"role": "user", "content": "Tell me about the child."}], "content_tier": "nsfw"}
    assert_policy_refusal(_post(chat_app, "/chat", floor), policy.FLOOR)
    assert_policy_refusal(_post(chat_app, "/enhance/instruct", {"prompt": "ein Kind im Park", "content_tier": "nsfw"}),
                          policy.FLOOR)


def test_a_chat_reply_the_classifier_flags_is_replaced_by_the_refusal(chat_app, scripted, low_threshold):  # noqa: F811
    scripted("The kid waits by the door.")
    answer = _post(chat_app, "/chat", {"messages": [{"role": "user", "content": "Continue the story."}],
                                       "content_tier": "nsfw"}).get_json()
    assert answer["finish_reason"] == "content_filter"
    assert "content policy" in answer["response"]
    assert "kid" not in json.dumps(answer)
    assert [(c["stage"], c["outcome"]) for c in answer["content_policy"]["checks"]] == [
        ("chat_input", "allowed"), ("chat_output", "refused")]


def test_an_sfw_stream_the_classifier_flags_is_refused_before_any_byte(chat_app, scripted, low_threshold):  # noqa: F811
    scripted("never sent")
    # no tier field on the OpenAI body: CONTENT_TIER_DEFAULT (sfw); the input is read before the stream starts
    reply = _post(chat_app, "/v1/chat/completions", {"model": "qwen_instruct", "stream": True,
                                                     "messages": [{"role": "user", "content": "Continue."}]})
    assert_policy_refusal(reply, policy.EXPLICIT)


def test_an_nsfw_stream_the_classifier_flags_ends_with_the_refusal(chat_app, scripted, monkeypatch):  # noqa: F811
    _app, state = chat_app
    monkeypatch.setattr(state, "settings", state.settings.replace(text_safety_threshold=LOW,
                                                                  content_tier_default="nsfw"))
    scripted("The kid waits by the door.")
    reply = _post(chat_app, "/v1/chat/completions", {"model": "qwen_instruct", "stream": True,
                                                     "messages": [{"role": "user", "content": "Continue."}]})
    events = [json.loads(line[6:]) for line in reply.get_data(as_text=True).splitlines()
              if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices"))
    assert events[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert text.endswith(policy.refusal_text(policy.FLOOR))
    # the rules released the words before the end; the classifier judged the whole reply at its end
    assert "door" not in text


# ---- the generation path: an SDXL worker (gunicorn) over HTTP and the app's Redis queue ----------------------

QUEUE = "text_classifier_sdxl_queue"
JOB = {"type": "sdxl_image_fast", "user_id": "u1", "config": {"seed": 3, "steps": 2, "width": 64, "height": 64}}


def start_queue_worker(tmp: Path, placeholder_dir, redis_server, standin, queue: str, **threshold):
    """An SDXL worker reading `queue` with one classifier threshold set low, its callbacks to the stand-in."""
    from tests.supabase_standin import CALLBACK_SECRET, SERVICE_KEY
    from tests.support import WorkerProcess, base_env

    env = base_env(tmp, placeholder_dir, REDIS_URL=redis_server.url, SDXL_QUEUE=queue, SUPABASE_URL=standin.url,
                   SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY, JOB_CALLBACK_SECRET=CALLBACK_SECRET, QUEUE_BLOCK_S="0.2",
                   **threshold)
    return WorkerProcess("sdxl", env).start()


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory, placeholder_dir, redis_server, standin):
    worker = start_queue_worker(tmp_path_factory.mktemp("text-classifier-sdxl"), placeholder_dir, redis_server,
                                standin, QUEUE, TEXT_SAFETY_THRESHOLD=str(LOW))
    yield worker
    worker.stop()


def test_generate_refuses_what_the_classifier_flags_and_records_what_it_passed(sdxl):
    refused = assert_policy_refusal(sdxl.client.post("/generate", json={**JOB, "prompt": "a lighthouse at dusk",
                                                                        "content_tier": "sfw"}), policy.EXPLICIT)
    assert refused["error"]["details"][0]["stage"] == "prompt"
    assert_policy_refusal(sdxl.client.post("/generate", json={**JOB, "prompt": "un niño con una cometa",
                                                              "content_tier": "nsfw"}), policy.FLOOR)
    accepted = sdxl.client.post("/generate", json={**JOB, "id": "tc-ok", "prompt": "a lighthouse at dusk",
                                                   "content_tier": "nsfw"})
    assert accepted.status_code == 202, accepted.text
    record = sdxl.client.wait_job("tc-ok")
    assert record["status"] == "completed", record
    checks = record["metadata"]["content_policy"]["checks"]
    assert [(c["check"], c["stage"], c["outcome"]) for c in checks] == [
        ("text", "prompt", "allowed"), ("text_classifier", "prompt", "allowed")]
    assert checks[1]["threshold"] == LOW
    assert "content_policy_checks" not in record["metadata"]["parameters"]


def test_a_queued_job_the_classifier_flags_fails_with_a_signed_callback(sdxl, standin, redis_server):
    from tests.app_client import queue_job_payload, rpush

    payload = queue_job_payload(prompt="a little girl flying a kite", content_type="nsfw")
    rpush(redis_server.client(), payload, QUEUE)
    found = standin.wait_for(lambda: standin.terminal_callbacks(payload["id"]), 120)
    assert found, standin.callbacks(payload["id"])
    callback = found[0]["body"]  # the stand-in accepts only correctly signed callbacks
    assert callback["status"] == "failed"
    assert callback["error_message"] == "content policy: sexual_minors"
    assert callback["metadata"]["error_type"] == "content_policy"


# ---- the output image classifier on a queued sfw job (SAFETY_THRESHOLD=0.01 flags every output) -------------

OUTPUT_QUEUE = "output_classifier_sdxl_queue"


@pytest.fixture(scope="module")
def sdxl_output_check(tmp_path_factory, placeholder_dir, redis_server, standin):
    worker = start_queue_worker(tmp_path_factory.mktemp("output-classifier-sdxl"), placeholder_dir, redis_server,
                                standin, OUTPUT_QUEUE, SAFETY_THRESHOLD=str(LOW))
    yield worker
    worker.stop()


def test_a_queued_sfw_job_whose_output_the_image_classifier_flags_fails(sdxl_output_check, standin, redis_server):
    from tests.app_client import queue_job_payload, rpush

    payload = queue_job_payload(prompt="a lighthouse at dusk", content_type="sfw")
    rpush(redis_server.client(), payload, OUTPUT_QUEUE)
    found = standin.wait_for(lambda: standin.terminal_callbacks(payload["id"]), 180)
    assert found, standin.callbacks(payload["id"])
    callback = found[0]["body"]
    assert callback["status"] == "failed"
    assert callback["error_message"] == "content policy: sexual_explicit"
    checks = callback["metadata"]["content_policy"]["checks"]
    assert [(c["check"], c["outcome"]) for c in checks] == [("text", "allowed"), ("text_classifier", "allowed"),
                                                            ("output_classifier", "refused")]
    assert checks[2]["threshold"] == LOW
    assert checks[2]["category"] == policy.EXPLICIT
