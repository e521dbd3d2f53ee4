"""The chat engine on the placeholder Qwen models, in process: per-row sampling, batching, stop rules,
normalisation, and the pure decisions (GPU plan, cleaning, sampling) on hand-made inputs."""
import contextlib
import copy
import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest
import torch

from common.errors import ModelBusy
from configuration import chat_config
from configuration import requests as request_models
from configuration.requests.common import ValidationFailed
from configuration.settings import Settings
from workers.engines.chat import Batcher, ChatEngine, Overloaded, clean_enhancement
from workers.engines.chat.decoding import Detokenizer, find_stop, held_back
from workers.engines.chat.plan import batch_working_bytes, gpu_plan, kv_cache_bytes_per_token
from workers.engines.chat.prompts import render_template
from workers.engines.chat.running import RunningBatch
from workers.engines.chat.sampling import penalise, sample_rows
from workers.runtime.local_memory import LocalMemory
from workers.runtime.models import ModelHost

MESSAGES = [{"role": "user", "content": "a red fox in the snow"}]


@pytest.fixture(scope="module")
def chat_settings(placeholder_dir, tmp_path_factory):
    return Settings(placeholder_models_dir=placeholder_dir, output_dir=tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def engine(chat_settings):
    engine = ChatEngine(chat_settings)
    host = ModelHost(engine, LocalMemory(chat_settings, engine.device))
    host.load("all")
    engine.host = host
    return engine


def params(settings, model="qwen_instruct", **body):
    body.setdefault("messages", MESSAGES)
    body.setdefault("max_tokens", 12)
    return request_models.normalise("chat.chat", {"model": model, **body}, settings)


def enhance(body, model, settings):
    """As POST /enhance/<model> builds them: the body's request model, the route's model."""
    return request_models.check("chat.enhance", body, settings).to_params(settings, model)


def run(engine, *requests):
    generations = [engine.prepare(p) for p in requests]
    engine.generate(generations)
    return [g.wait(0) for g in generations]


# ---- pure decisions -----------------------------------------------------------------------------

def test_gpu_plan_is_the_attention_kernel():
    assert gpu_plan({"attention": "sdpa"}) == {"attn_implementation": "sdpa"}
    assert gpu_plan({}) == {"attn_implementation": "sdpa"}
    assert gpu_plan({"attention": "eager"}) == {"attn_implementation": "eager"}


def test_kv_cache_working_memory():
    qwen7b = {"hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4, "num_hidden_layers": 28}
    assert kv_cache_bytes_per_token(qwen7b, dtype_bytes=2) == 2 * 28 * 4 * 128 * 2  # 56 KiB per token in bf16
    # two rows (prompt tokens, max_tokens), each as wide as the longest prompt plus the largest max_tokens;
    # prompts of different lengths are padded: the boolean mask rows x longest^2 counts
    assert batch_working_bytes([(3, 10), (100, 4)], per_token=1) == 2 * (100 + 10) + 2 * 100 * 100
    # one length: no padding, no mask
    assert batch_working_bytes([(100, 10), (100, 4)], per_token=1) == 2 * (100 + 10)


def test_engine_working_bytes_from_the_model_config(engine, chat_settings):
    p = params(chat_settings, messages=[{"role": "user", "content": "x" * 10}], max_tokens=6)
    per_token = 2 * 2 * 2 * 16 * 4  # placeholder: 2 layers, 2 KV heads of 16, float32 on CPU
    prefill = 4 * (4 * 64 + 2 * 2 * 16 + 3 * 128)  # hidden 64, intermediate 128 (issue 14: activations count)
    vocab = json.loads((Path(engine.configs["qwen_instruct"]["path"]) / "config.json").read_text())["vocab_size"]
    sampling = vocab * 9  # float32 logits, bool seen flags, float32 counts per row
    prompt = len(engine.prompt_ids(p))  # the real token count, not a bound from UTF-8 bytes (issue 20)
    assert engine.working_bytes(p) == per_token * (prompt + 6) + prefill * prompt + sampling
def test_base_template_rendering_is_configuration():
    template = chat_config()["models"]["qwen_base"]["template"]
    text = render_template([{"role": "system", "content": "SYS"}, {"role": "user", "content": "a fox"}], template)
    assert text == template["system"].replace("{content}", "SYS") + template["user"].replace("{content}", "a fox") \
        + template["generation_prompt"]


def test_stop_strings_and_hold_back():
    assert find_stop("abc\nUser: x", ["\nUser:"]) == 3
    assert find_stop("abc", ["x", "c", "b"]) == 1
    assert find_stop("abc", []) is None
    assert held_back("hello\nUs", ["\nUser:"]) == 3
    assert held_back("hello", ["\nUser:"]) == 0


@pytest.mark.parametrize(("text", "expected"), [
    ('  "a red fox, golden light"  ', "a red fox, golden light"),
    ("a red fox\na red fox at dawn, mist", "a red fox at dawn, mist"),     # echoed prompt line
    ("a red fox at dawn", "a red fox at dawn"),                            # extends the prompt: kept
    ("<|im_end|>\u201ca fox, cinematic\u201d<|endoftext|>", "a fox, cinematic"),
    ("  A Red Fox ", ""),                                                  # only the prompt: nothing
    ("'a red fox'", ""),
    ("   ", ""),
])
def test_clean_enhancement(text, expected):
    quotes = chat_config()["cleaning"]["quote_pairs"]
    assert clean_enhancement(text, "a red fox", ["<|im_end|>", "<|endoftext|>"], quotes) == expected


def _rows(*logits):
    return torch.tensor(logits, dtype=torch.float32)


def test_sample_rows_per_row_parameters():
    scores = _rows([0.0, 2.0, 1.0, -1.0], [0.0, 2.0, 1.0, -1.0], [0.0, 2.0, 1.0, -1.0])
    temperature = torch.tensor([0.0, 1.0, 1.0])
    top_k = torch.tensor([0, 1, 0])
    top_p = torch.tensor([1.0, 1.0, 1.0])
    u = torch.tensor([0.99, 0.99, 0.99], dtype=torch.float64)
    tokens = sample_rows(scores, temperature, top_k, top_p, u)
    # greedy -> argmax; top_k=1 -> argmax whatever u; u=0.99 without limits -> the least likely kept token
    assert tokens.tolist() == [1, 1, 3]


def test_sample_rows_inverse_cdf_and_top_p():
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    scores = probs.log()

    def pick(u, top_p=1.0):
        return sample_rows(scores, torch.tensor([1.0]), torch.tensor([0]), torch.tensor([top_p]),
                           torch.tensor([u], dtype=torch.float64)).item()
    # sorted by probability: 1 (0.5), 2 (0.3), 0 (0.2)
    assert [pick(0.1), pick(0.6), pick(0.9)] == [1, 2, 0]
    assert pick(0.9, top_p=0.7) == 2      # nucleus {1, 2}: renormalised, u=0.9 lands on 2
    assert pick(0.9, top_p=0.5) == 1      # nucleus {1}


def _greedy(scores):
    n = len(scores)
    return sample_rows(scores, torch.zeros(n), torch.zeros(n, dtype=torch.long), torch.ones(n),
                       torch.zeros(n, dtype=torch.float64)).tolist()


def test_repetition_penalty_counts_only_the_rows_own_tokens():
    # Token 3 is in row 1's prompt or output, not in row 0's.
    seen = torch.tensor([[False, True, False, False], [False, True, False, True]])
    scores = _rows([1.0, 1.0, 1.0, 5.0], [1.0, 1.0, 1.0, 5.0])
    none = torch.zeros((2, 4))
    # 5 / 6 < 1: where token 3 is penalised, token 0 wins
    assert _greedy(penalise(scores, seen, torch.tensor([6.0, 6.0]), none, None, None)) == [3, 0]
    assert _greedy(penalise(scores, seen, torch.tensor([1.0, 6.0]), none, None, None)) == [3, 0]
    assert _greedy(penalise(scores, seen, None, none, None, None)) == [3, 3]
    negative = penalise(_rows([-2.0, 1.0]), torch.tensor([[True, True]]), torch.tensor([2.0]), torch.zeros((1, 2)),
                        None, None)
    assert negative.tolist() == [[-4.0, 0.5]]   # negative logits are multiplied, positive divided


def test_frequency_and_presence_penalties_are_openais():
    """logit[j] -= count[j] * frequency + (count[j] > 0) * presence, per row, over the row's own output."""
    scores = _rows([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    counts = torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]])
    seen = torch.zeros((2, 3), dtype=torch.bool)
    out = penalise(scores, seen, None, counts, torch.tensor([0.5, 0.0]), torch.tensor([0.25, 1.0]))
    assert out.tolist() == [[1.0, 1.0 - 0.5 - 0.25, 1.0 - 1.5 - 0.25], [0.0, 1.0, 1.0]]
    assert penalise(scores, seen, None, counts, None, None).tolist() == scores.tolist()


def test_detokenizer_deltas_concatenate_to_the_decoded_text(engine):
    tokenizer = engine._loaded["qwen_instruct"].tokenizer
    ids = tokenizer("héllo wörld 日本語 🦊 <|im_end|> done", add_special_tokens=False).input_ids
    detok = Detokenizer(tokenizer)
    deltas = [detok.push(t) for t in ids] + [detok.flush()]
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in d for d in deltas)


# ---- normalisation ------------------------------------------------------------------------------

def test_defaults_come_from_configuration_and_are_reported(chat_settings):
    cfg = chat_config()
    p = enhance({"prompt": "a fox"}, "qwen_instruct", chat_settings)
    assert {k: p[k] for k in cfg["defaults"]["enhance"]} == cfg["defaults"]["enhance"]
    assert p["messages"] == [{"role": "user", "content": "a fox"}]
    assert p["seed_source"] == "random"
    sdxl = enhance({"prompt": "a fox", "target_model": "sdxl"}, "qwen_instruct", chat_settings)
    assert sdxl["max_tokens"] == cfg["enhance_targets"]["sdxl"]["max_tokens"]
    assert enhance({"prompt": "a fox", "target_model": "sdxl", "max_tokens": 9}, "qwen_base",
                               chat_settings)["max_tokens"] == 9


def test_base_template_stops_apply_to_templated_prompts_only(chat_settings):
    template_stops = chat_config()["models"]["qwen_base"]["template"]["stop"]
    templated = enhance({"prompt": "a fox", "stop": "END"}, "qwen_base", chat_settings)
    assert templated["stop"] == ["END", *template_stops]
    raw = enhance({"prompt": "a fox", "raw": True}, "qwen_base", chat_settings)
    assert raw["stop"] == []
    assert raw["text"] == "a fox"
    assert raw["messages"] is None
    assert enhance({"prompt": "a fox"}, "qwen_instruct", chat_settings)["stop"] == []


@pytest.mark.parametrize(("body", "path"), [
    ({"prompt": "a", "raw": True, "system_prompt": "s"}, "/system_prompt"),
    ({"prompt": "a", "messages": MESSAGES, "system_prompt": "s"}, "/system_prompt"),
    ({"prompt": "a", "messages": MESSAGES, "raw": True}, "/raw"),
    ({"messages": [{"role": "system", "content": "s"}]}, "/messages"),
])
def test_enhance_conflicts(chat_settings, body, path):
    with pytest.raises(ValidationFailed) as err:
        enhance(body, "qwen_base", chat_settings)
    assert err.value.details[0]["path"] == path


def test_openai_max_completion_tokens(chat_settings):
    body = {"model": "qwen_base", "messages": MESSAGES, "max_completion_tokens": 7}
    assert request_models.normalise("chat.completions", body, chat_settings)["max_tokens"] == 7
    with pytest.raises(ValidationFailed):
        request_models.normalise("chat.completions", {**body, "max_tokens": 8}, chat_settings)


# ---- generation on the placeholder models ---------------------------------------------------------

def test_same_seed_same_text_whatever_else_is_in_the_batch(engine, chat_settings):
    mine = params(chat_settings, seed=1234, temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.2)
    [alone] = run(engine, mine)
    others = [params(chat_settings, seed=7, messages=[{"role": "user", "content": "a much longer prompt " * 12}],
                     max_tokens=20),
              params(chat_settings, temperature=0, seed=1),
              params(chat_settings, seed=99, top_p=0.5, max_tokens=3)]
    batched = run(engine, others[0], mine, others[1], others[2])
    assert batched[1].batch_size == 4
    assert batched[1].text == alone.text
    assert batched[1].completion_tokens == alone.completion_tokens
    assert run(engine, params(chat_settings, seed=1235, temperature=0.9, top_k=50, top_p=0.95,
                              repetition_penalty=1.2))[0].text != alone.text


def test_greedy_is_a_plain_argmax_decode(engine, chat_settings):
    """Temperature 0 equals argmax over the bare model's logits: none of the checkpoint's own sampling
    defaults (Qwen's repetition_penalty 1.05, top_k 20, ...) sneak into generation."""
    loaded = engine._loaded["qwen_instruct"]
    p = params(chat_settings, temperature=0, max_tokens=10, seed=3)
    [result] = run(engine, p)
    ids = torch.tensor([engine.prompt_ids(p)])
    produced = []
    with torch.inference_mode():
        for _ in range(10):
            token = int(loaded.model(input_ids=ids).logits[0, -1].argmax())
            produced.append(token)
            if token in loaded.eos_ids:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    expected = loaded.tokenizer.decode([t for t in produced if t not in loaded.eos_ids], skip_special_tokens=True)
    assert result.text == expected
    assert run(engine, {**p, "seed": 4})[0].text == expected  # the seed plays no part in greedy decoding


def test_frequency_and_presence_penalties_apply_per_row_over_its_own_output(engine, chat_settings):
    """Greedy decoding with penalties equals a hand-written loop over the bare model's logits applying
    OpenAI's formula; in a batch, each row uses only its own penalties and counts."""
    loaded = engine._loaded["qwen_instruct"]
    penalised = params(chat_settings, temperature=0, max_tokens=60, seed=3, frequency_penalty=1.5,
                       presence_penalty=0.5)
    plain = params(chat_settings, temperature=0, max_tokens=12, seed=3,
                   messages=[{"role": "user", "content": "another prompt"}])
    results = run(engine, penalised, plain)
    counts = torch.zeros(loaded.model.config.vocab_size)
    produced = []
    with torch.inference_mode():  # one token a step over the model's own KV cache, as a decode loop runs
        out = loaded.model(input_ids=torch.tensor([engine.prompt_ids(penalised)]), use_cache=True)
        for _ in range(60):
            logits = out.logits[0, -1].float()
            token = int((logits - counts * 1.5 - (counts > 0).float() * 0.5).argmax())
            produced.append(token)
            if token in loaded.eos_ids:
                break
            counts[token] += 1
            out = loaded.model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    expected = loaded.tokenizer.decode([t for t in produced if t not in loaded.eos_ids], skip_special_tokens=True)
    assert results[0].text == expected
    assert results[1].text == run(engine, plain)[0].text    # its neighbour's penalties did not touch it
    assert run(engine, {**penalised, "frequency_penalty": 0.0, "presence_penalty": 0.0})[0].text != expected


def test_policy_inputs_and_caller_context_ride_along(chat_settings):
    body = {"messages": MESSAGES, "sfw_mode": False, "content_tier": "nsfw", "nsfw_enforce": True,
            "nsfw_reason": "opted in", "conversation_id": "c1", "project_context": None, "context_type": "general"}
    p = request_models.normalise("chat.chat", body, chat_settings)
    assert p["policy"] == {"sfw_mode": False, "content_tier": "nsfw", "nsfw_enforce": True, "nsfw_reason": "opted in"}
    assert p["context"] == {"conversation_id": "c1", "context_type": "general"}  # a null project_context is absent
    bare = request_models.normalise("chat.chat", {"messages": MESSAGES}, chat_settings)
    assert bare["policy"] == dict.fromkeys(("sfw_mode", "content_tier", "nsfw_enforce", "nsfw_reason"))
    assert bare["context"] == {}
    assert bare["reproducible"] is False
    assert (bare["frequency_penalty"], bare["presence_penalty"]) == (0.0, 0.0)


def test_max_tokens_and_stop_strings(engine, chat_settings):
    short, longer = run(engine, params(chat_settings, max_tokens=3, seed=5), params(chat_settings, max_tokens=15,
                                                                                    seed=5))
    assert (short.completion_tokens, short.finish_reason) == (3, "length")
    assert longer.completion_tokens <= 15
    assert longer.text.startswith(short.text)
    stop = longer.text[6:8]
    [stopped] = run(engine, params(chat_settings, max_tokens=15, seed=5, stop=[stop]))
    assert stopped.finish_reason == "stop"
    assert stopped.text == longer.text[:longer.text.find(stop)]


def test_streamed_deltas_equal_the_text(engine, chat_settings):
    p = {**params(chat_settings, seed=11, max_tokens=20, stop=["zz"]), "stream": True}
    g = engine.prepare(p)
    engine.generate([g])
    events = []
    while True:
        kind, payload = g.next_event(0)
        events.append((kind, payload))
        if kind in ("done", "error"):
            break
    assert events[0][0] == "started"
    assert events[-1][0] == "done"
    deltas = [payload for kind, payload in events if kind == "delta"]
    assert len(deltas) > 1
    assert "".join(deltas) == events[-1][1].text


def test_a_prompt_too_long_fails_alone(engine, chat_settings):
    limit = engine.configs["qwen_base"]["limits"]["max_prompt_tokens"]
    too_long = enhance({"prompt": "fox " * (limit + 10), "raw": True, "max_tokens": 4}, "qwen_base",
                                   chat_settings)
    fine = enhance({"prompt": "fox", "raw": True, "max_tokens": 4, "seed": 1}, "qwen_base", chat_settings)
    # checked when the request is prepared, in the caller's thread, before anything is queued
    with pytest.raises(ValidationFailed) as err:
        engine.prepare(too_long)
    assert err.value.details[0]["path"] == "/prompt"
    assert "at most" in err.value.details[0]["message"]
    good = engine.prepare(fine)
    engine.generate([good])
    assert good.wait(0).completion_tokens == 4


# ---- batcher -------------------------------------------------------------------------------------

class CountingEngine:
    """Wraps the real engine's running batches to record how many run at once."""

    def __init__(self, engine):
        self.engine = engine
        self.active = self.most = 0
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    @contextlib.contextmanager
    def running(self, model):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            with self.engine.running(model) as batch:
                yield batch
        finally:
            with self.lock:
                self.active -= 1


def _submit_concurrently(batcher, requests):
    generations = [batcher.engine.prepare(p) for p in requests]
    threads = [threading.Thread(target=batcher.submit, args=(g,)) for g in generations]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [g.wait(30) for g in generations]


def test_batcher_batches_concurrent_requests_and_never_overlaps_batches(engine, chat_settings):
    counting = CountingEngine(engine)
    batcher = Batcher(counting, engine.host, "qwen_instruct", batch_size=4, window_s=0.2, max_queue=64)
    results = _submit_concurrently(batcher, [params(chat_settings, seed=i, max_tokens=6) for i in range(10)])
    assert max(r.batch_size for r in results) == 4
    assert all(r.batch_size <= 4 for r in results)
    assert batcher.batches < 10
    assert batcher.rows == 10
    assert counting.most == 1
    # the results are those of each request alone
    assert results[3].text == run(engine, params(chat_settings, seed=3, max_tokens=6))[0].text

    unbatched = Batcher(engine, engine.host, "qwen_instruct", batch_size=1, window_s=0.05, max_queue=64)
    assert {r.batch_size for r in _submit_concurrently(
        unbatched, [params(chat_settings, seed=i, max_tokens=4) for i in range(3)])} == {1}


def _wait_admitted(batcher):
    """Until this batcher has taken its first request off its queue. (The model's `busy` flag is no signal:
    the engine is shared by the module, and the previous test's busy period may not have ended yet.)"""
    deadline = time.monotonic() + 30
    while not (batcher.rows >= 1 and batcher.depth() == 0):
        assert time.monotonic() < deadline, "the batcher never admitted the first request"
        time.sleep(0.002)


@pytest.mark.parametrize("continuous", [True, False])
def test_a_short_request_joins_a_running_batch_only_when_continuous(engine, chat_settings, continuous):
    batcher = Batcher(engine, engine.host, "qwen_instruct", batch_size=4, window_s=0.0, max_queue=8,
                      continuous=continuous)
    long = engine.prepare(params(chat_settings, seed=1, max_tokens=400, temperature=0.0))
    batcher.submit(long)
    _wait_admitted(batcher)
    short = engine.prepare(params(chat_settings, seed=2, max_tokens=3))
    batcher.submit(short)
    short_result = short.wait(60)
    long_done_first = long.done
    long_result = long.wait(60)
    assert long_result.completion_tokens == 400
    assert short_result.completion_tokens == 3
    if continuous:  # joined the running batch at the next step and left it when done
        assert short_result.batch_size == 2
        assert not long_done_first
    else:           # waited for the running batch to end, then ran in the next one
        assert short_result.batch_size == 1
        assert long_done_first
        assert short_result.queue_time >= long_result.generation_time * 0.5


def test_a_reproducible_request_runs_alone_and_gives_the_text_it_gives_alone(engine, chat_settings):
    batcher = Batcher(engine, engine.host, "qwen_instruct", batch_size=4, window_s=0.2, max_queue=64)
    requests = [params(chat_settings, seed=i, max_tokens=30 + i, temperature=0.9) for i in range(5)]
    requests[2] = {**requests[2], "reproducible": True}
    results = _submit_concurrently(batcher, requests)
    assert results[2].batch_size == 1
    assert max(r.batch_size for r in results) > 1
    alone = run(engine, {**requests[2], "reproducible": False})[0]
    assert results[2].text == alone.text


def test_full_queue_is_overloaded_and_a_running_batch_keeps_its_model(engine, chat_settings):
    batcher = Batcher(engine, engine.host, "qwen_base", batch_size=1, window_s=0.0, max_queue=1)
    lock = engine._generate_locks["qwen_base"]
    with lock:  # the batcher's first batch blocks inside generate, holding the model in use
        first = engine.prepare(params(chat_settings, model="qwen_base", seed=1, max_tokens=3))
        batcher.submit(first)
        deadline = time.monotonic() + 10
        while engine.host.status()["qwen_base"]["busy"] is False and time.monotonic() < deadline:
            time.sleep(0.01)
        batcher.submit(engine.prepare(params(chat_settings, model="qwen_base", seed=2, max_tokens=3)))
        with pytest.raises(Overloaded):
            batcher.submit(engine.prepare(params(chat_settings, model="qwen_base", seed=3, max_tokens=3)))
        with pytest.raises(ModelBusy):
            engine.host.unload("qwen_base", wait_s=0)
    assert first.wait(30).completion_tokens == 3
    assert engine.host.unload("qwen_base", wait_s=30) == ["qwen_base"]
    assert not engine.is_loaded("qwen_base")
    assert engine.is_loaded("qwen_instruct")
    engine.host.load("qwen_base")


def test_a_conversation_the_chat_template_rejects_is_a_validation_error(engine, chat_settings):
    tokenizer = engine.tokenizer("qwen_instruct")
    original = tokenizer.chat_template
    tokenizer.chat_template = "{{ raise_exception('conversation roles must alternate') }}"
    try:
        with pytest.raises(ValidationFailed) as err:
            engine.prepare(params(chat_settings, seed=1))  # before anything is queued
    finally:
        tokenizer.chat_template = original
    assert err.value.details == [{"path": "/messages", "message": "the model's chat template rejected the "
                                  "conversation: conversation roles must alternate"}]


def test_rows_joining_and_leaving_a_running_batch_decode_as_they_would_alone(engine, chat_settings):
    """The cache bookkeeping of continuous batching (a row padded to join a wider batch, a wider row padding
    the others, finished rows removed and unused columns trimmed) in float64, where batched arithmetic
    cannot flip a token: every row's text equals its text alone."""
    loaded = engine._loaded["qwen_instruct"]
    wide = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model).double())
    def request(seed, words, max_tokens):
        return params(chat_settings, seed=seed, max_tokens=max_tokens, temperature=0.9, frequency_penalty=0.5,
                      presence_penalty=0.3, repetition_penalty=1.1,
                      messages=[{"role": "user", "content": "fox " * words}])
    first, narrow, wider, late = request(1, 5, 6), request(2, 1, 20), request(3, 40, 9), request(4, 2, 5)

    def alone(p):
        batch = RunningBatch(wide)
        g = engine.prepare(p)
        batch.admit([g])
        while len(batch):
            batch.step()
        return g.wait(0).text

    batch = RunningBatch(wide)
    generations = [engine.prepare(p) for p in (first, narrow, wider, late)]
    batch.admit(generations[:1])
    batch.step()
    batch.admit(generations[1:2])          # narrower than the batch: padded on the left
    batch.step()
    batch.admit(generations[2:3])          # wider than the batch: the others are padded
    widest = batch.mask.shape[1]
    while not generations[0].done:
        batch.step()
    batch.admit(generations[3:])
    while len(batch):
        batch.step()
        if generations[2].done:
            assert batch.mask.shape[1] < widest  # the wide row's columns were trimmed when it left
    assert [g.wait(0).text for g in generations] == [alone(p) for p in (first, narrow, wider, late)]
    assert generations[1].wait(0).batch_size == 3
