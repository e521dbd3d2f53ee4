"""Content policy: the confusion table on the labelled set and the cost of a check, in one run.

Runs every labelled prompt (tests/policy_labelled.py and tests/policy_labelled_data/, 20 languages)
through common/policy.py in both tiers and at every stage it is labelled for, prints what each label got
(allowed / refused sexual_explicit / refused sexual_minors), then per language: floor violations refused
(recall), benign texts refused (over-refusal), adult texts allowed in nsfw and refused in sfw. Then it
times a check per prompt: the labelled prompts one by one with the
word cache emptied before each (cold: no word seen before) and as they run in a pod (warm: the words
of earlier prompts cached), plus a 300-word enhanced prompt, a 16-turn conversation, the app's nsfw
roleplay (its guardrail sentence and 16 turns) and a 720-character Chinese text. Times are CPU
time of this process (time.process_time), so other load on the machine inflates them less than wall
time would.

The text classifier (workers/runtime/text_safety.py) is measured on the same texts, side by side with the
rules: by default the placeholder profile's tiny random XLM-R (the code path, not a production figure),
or the folder `--text-classifier` names (the production model after `python -m workers.download`), or
`--text-classifier synthetic`: random weights in the production model's shape (XLM-R base, 278M
parameters, its 16 labels) with the placeholder tokenizer, written to a temporary folder and loaded by the
same code: the production cost per token on this machine, with token counts from the small placeholder
vocabulary (a few more tokens per word than XLM-R's). Its decisions on the labelled set are printed too
(meaningful only for a trained model).

    .venv/bin/python benchmarks/policy.py
    .venv/bin/python benchmarks/policy.py --rounds 50
    .venv/bin/python benchmarks/policy.py --text-classifier /workspace/models/multilingual-toxic-xlm-roberta
    .venv/bin/python benchmarks/policy.py --text-classifier synthetic
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import policy  # noqa: E402
from tests.policy_labelled import CASES, ROLEPLAY_TURNS  # noqa: E402

OUTCOMES = ("allowed", policy.EXPLICIT, policy.FLOOR)
LONG_PROMPT = ("cinematic wide shot of a quiet harbour town at dawn, fishing boats returning with gulls circling "
               "above, warm light across wet cobblestones, an old lighthouse keeper walking his dog along the pier, "
               "mist rolling in from the sea, ") * 10
CONVERSATION = [
    "You are Mara, a ship's navigator in a fantasy world. Stay in character and keep replies short.",
    *[f"Turn {i}: the storm is getting worse and the crew asks Mara which course to take past the reefs."
      for i in range(16)],
]
CHINESE = ("黎明时分，一座安静的港口小镇，渔船带着海鸥归来，温暖的阳光洒在湿漉漉的鹅卵石上，"
           "一位年老的灯塔看守人牵着他的狗沿着码头散步，海雾从海上慢慢飘来。") * 10


EXPECTED: dict[str, dict[str, str | None]] = {
    "benign": {"sfw": None, "nsfw": None}, "adult": {"sfw": policy.EXPLICIT, "nsfw": None},
    "floor": {"sfw": policy.FLOOR, "nsfw": policy.FLOOR}}


def confusion() -> tuple[dict, dict, int, int, int]:
    """(label, tier) -> outcomes; language -> (label, tier) -> [as expected, checks]; floor missed, benign
    refused, adult not as expected."""
    rules = policy.rules()
    table: dict[tuple[str, str], Counter] = {}
    per_language: dict[str, dict[tuple[str, str], list[int]]] = {}
    floor_missed = benign_refused = adult_wrong = 0
    for case in CASES:
        for stage in case.stages:
            for tier in policy.TIERS:
                decision = rules.evaluate(case.text, tier, stage)
                outcome = decision.category or "allowed"
                table.setdefault((case.label, tier), Counter())[outcome] += 1
                cell = per_language.setdefault(case.language, {}).setdefault((case.label, tier), [0, 0])
                cell[0] += decision.category == EXPECTED[case.label][tier]
                cell[1] += 1
                floor_missed += case.label == "floor" and decision.category != policy.FLOOR
                benign_refused += case.label == "benign" and not decision.allowed
                adult_wrong += case.label == "adult" and decision.category != EXPECTED["adult"][tier]
    return table, per_language, floor_missed, benign_refused, adult_wrong


def print_languages(per_language: dict) -> None:
    print("\nper language (checks as expected / checks; a check is one text in one tier at one stage)")
    print(f"{'lang':<5} {'texts':>5} {'floor refused':>14} {'benign refused':>15} {'adult nsfw allowed':>19}"
          f" {'adult sfw refused':>18}")
    texts = Counter(c.language for c in CASES)
    for code in policy.rules().languages:
        cells = per_language.get(code, {})
        floor = [sum(x) for x in zip(*(cells.get(("floor", t), [0, 0]) for t in policy.TIERS), strict=True)]
        benign = [sum(x) for x in zip(*(cells.get(("benign", t), [0, 0]) for t in policy.TIERS), strict=True)]
        adult_nsfw, adult_sfw = cells.get(("adult", "nsfw"), [0, 0]), cells.get(("adult", "sfw"), [0, 0])
        print(f"{code:<5} {texts[code]:>5} {floor[0]:>8}/{floor[1]:<5} {benign[1] - benign[0]:>9}/{benign[1]:<5}"
              f" {adult_nsfw[0]:>13}/{adult_nsfw[1]:<5} {adult_sfw[0]:>12}/{adult_sfw[1]:<5}")


def cost_us(texts: list[str], rounds: int, cold: bool, stage: str = "prompt") -> list[float]:
    """CPU microseconds per check of each text (median over rounds)."""
    rules = policy.rules()
    per_text = []
    for text in texts:
        samples = []
        for _ in range(rounds):
            if cold:
                rules._word_cache.clear()
            started = time.process_time()
            rules.evaluate(text, "sfw", stage)
            samples.append((time.process_time() - started) * 1e6)
        per_text.append(statistics.median(samples))
    return per_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed checks per prompt (median taken)")
    parser.add_argument("--text-classifier", default="", help="text classifier folder (default: the placeholder)")
    parser.add_argument("--classifier-rounds", type=int, default=3, help="timed classifier checks per text")
    parser.add_argument("--classifier-sample", type=int, default=40,
                        help="labelled prompts the classifier is timed on (spread over the set)")
    args = parser.parse_args(argv)

    table, per_language, floor_missed, benign_refused, adult_wrong = confusion()
    labels = Counter(c.label for c in CASES)
    obfuscated = Counter(c.label for c in CASES if c.obfuscated)
    counts = ", ".join(f"{k} {v} ({obfuscated[k]} obfuscated)" for k, v in labels.items())
    print(f"labelled prompts: {len(CASES)} ({counts})")
    print("checks: each prompt x each tier x each stage it is labelled for (prompt and/or chat_input)\n")
    print(f"{'label':<8} {'tier':<5} " + " ".join(f"{o:>16}" for o in OUTCOMES))
    for label in ("benign", "adult", "floor"):
        for tier in policy.TIERS:
            row = table.get((label, tier), Counter())
            print(f"{label:<8} {tier:<5} " + " ".join(f"{row[o]:>16}" for o in OUTCOMES))
    floor_total = sum(sum(table[("floor", t)].values()) for t in policy.TIERS)
    benign_total = sum(sum(table[("benign", t)].values()) for t in policy.TIERS)
    adult_total = sum(sum(table[("adult", t)].values()) for t in policy.TIERS)
    print(f"\nfloor violations refused: {floor_total - floor_missed}/{floor_total}; "
          f"benign refused: {benign_refused}/{benign_total}; "
          f"adult as expected: {adult_total - adult_wrong}/{adult_total}")
    print_languages(per_language)

    texts = [c.text for c in CASES]
    rules = policy.rules()
    cold = cost_us(texts, args.rounds, cold=True)
    rules._word_cache.clear()
    for text in texts:  # warm the cache as a pod's earlier prompts would
        rules.evaluate(text, "sfw", "prompt")
    warm = cost_us(texts, args.rounds, cold=False)
    long_prompt = cost_us([LONG_PROMPT], args.rounds, cold=True)[0]
    conversation = cost_us(["\n".join(CONVERSATION)], args.rounds, cold=True, stage="chat_input")[0]
    roleplay = cost_us(["\n".join(ROLEPLAY_TURNS)], args.rounds, cold=True, stage="chat_input")[0]
    chinese = cost_us([CHINESE], args.rounds, cold=True)[0]
    words = [len(t.split()) for t in texts]

    def summary(values: list[float]) -> str:
        ordered = sorted(values)
        return (f"median {statistics.median(ordered):7.1f} us   p95 {ordered[int(0.95 * (len(ordered) - 1))]:7.1f} us"
                f"   max {ordered[-1]:7.1f} us")

    print(f"\ncost per check (CPU time; {args.rounds} rounds, median each; prompts of {min(words)}-{max(words)} words)")
    print(f"  labelled prompts, cold word cache: {summary(cold)}")
    print(f"  labelled prompts, warm word cache: {summary(warm)}")
    print(f"  {len(LONG_PROMPT.split())}-word enhanced prompt, cold:      {long_prompt:7.1f} us")
    print(f"  {len(CONVERSATION)}-message conversation ({sum(len(m.split()) for m in CONVERSATION)} words), cold: "
          f"{conversation:7.1f} us")
    print(f"  the app's nsfw roleplay, {len(ROLEPLAY_TURNS)} messages "
          f"({sum(len(m.split()) for m in ROLEPLAY_TURNS)} words), cold: {roleplay:7.1f} us")
    print(f"  {len(CHINESE)}-character Chinese prompt, cold:   {chinese:7.1f} us")
    classifier_section(args, texts, [("labelled prompts (median)", statistics.median(cold)),
                                     (f"{len(LONG_PROMPT.split())}-word enhanced prompt", long_prompt),
                                     (f"{len(CONVERSATION)}-message conversation", conversation)])
    return 0 if floor_missed == 0 and benign_refused == 0 and adult_wrong == 0 else 1


def synthetic_text_classifier() -> Path:
    """A folder with XLMRobertaForSequenceClassification in bstrai/multilingual-toxic-xlm-roberta's shape
    (XLM-R base: vocabulary 250,002, 12 layers of 768, 514 positions; Detoxify's 16 labels), random
    weights, and the placeholder's XLM-R tokenizer. Written once under the system's temporary folder."""
    import tempfile

    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    from workers.placeholders import text_safety as placeholder

    folder = Path(tempfile.gettempdir()) / "ourvidz-synthetic-text-classifier"
    if (folder / "config.json").exists():
        return folder
    tokenizer = placeholder.build_tokenizer()
    tokenizer.model_max_length = 512
    id2label = dict(enumerate(placeholder.LABELS))
    config = XLMRobertaConfig(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                              layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2, id2label=id2label,
                              label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    model = XLMRobertaForSequenceClassification(config).eval()
    print(f"  (synthetic text classifier: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
          f"written to {folder})")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def classifier_section(args, texts: list[str], rules_us: list[tuple[str, float]]) -> None:
    """The text classifier's cost next to the rules' (CPU time of this process over all torch threads, and
    wall time), then its decisions on the labelled set."""
    import torch

    from configuration.settings import Settings
    from workers.placeholders import ensure_placeholder_models
    from workers.runtime import text_safety

    if args.text_classifier == "synthetic":
        folder = synthetic_text_classifier()
        settings = Settings(model_profile="production", text_safety_classifier_path=str(folder))
        what = ("random weights in the production shape (XLM-R base, 12 layers, hidden 768, 16 labels), the "
                "placeholder tokenizer: production cost per token on this machine, decisions meaningless")
    elif args.text_classifier:
        settings = Settings(model_profile="production", text_safety_classifier_path=args.text_classifier)
        what = f"{args.text_classifier} (production figure on this machine)"
    else:
        settings = Settings(placeholder_models_dir=ensure_placeholder_models(Settings().placeholder_models_dir))
        what = ("the placeholder (2 layers, hidden 32): the code path's cost, NOT the production model's; "
                "XLM-R base (12 layers, hidden 768) is unmeasured here")
    classifier = text_safety.for_settings(settings)
    assert classifier is not None
    started = time.perf_counter()
    classifier.load()
    load_s = time.perf_counter() - started
    print(f"\ntext classifier: {what}")
    print(f"  scheme {classifier.scheme['name']}, {classifier.max_tokens} tokens per window, threshold "
          f"{classifier.threshold}, loaded in {load_s:.2f} s; torch threads: {torch.get_num_threads()}")

    def timed(text: str, stage: str) -> tuple[float, float]:
        cpu, wall = [], []
        for _ in range(args.classifier_rounds):
            classifier.clear_cache()  # cold: no segment scored before
            c, w = time.process_time(), time.perf_counter()
            classifier.check(text, "sfw", stage)
            cpu.append((time.process_time() - c) * 1e6)
            wall.append((time.perf_counter() - w) * 1e6)
        return statistics.median(cpu), statistics.median(wall)

    sample = texts[::max(1, len(texts) // args.classifier_sample)][:args.classifier_sample]
    labelled = [timed(t, "prompt") for t in sample]
    measured = [(statistics.median(c for c, _ in labelled), statistics.median(w for _, w in labelled)),
                timed(LONG_PROMPT, "prompt"), timed("\n".join(CONVERSATION), "chat_input")]
    # the conversation's next turn: its history was scored at the previous turn (segment cache)
    next_turn = [*CONVERSATION, "Turn 16: Mara points at the chart and the crew turns the ship to port."]
    warm = []
    for _ in range(args.classifier_rounds):
        classifier.clear_cache()
        classifier.check("\n".join(CONVERSATION), "sfw", "chat_input")
        c, w = time.process_time(), time.perf_counter()
        classifier.check("\n".join(next_turn), "sfw", "chat_input")
        warm.append(((time.process_time() - c) * 1e6, (time.perf_counter() - w) * 1e6))
    rules_us.append((f"{len(next_turn)}-message conversation, next turn",
                     statistics.median(cost_us(["\n".join(next_turn)], args.rounds, cold=False, stage="chat_input"))))
    measured.append((statistics.median(c for c, _ in warm), statistics.median(w for _, w in warm)))
    print(f"  {'cost per check (median of ' + str(args.classifier_rounds) + ' rounds)':<44} {'rules CPU':>11} "
          f"{'classifier CPU':>15} {'wall':>11} {'CPU ratio':>10}")
    # the rules' figure for the same sample (cold word cache, as above)
    rules_us = [(f"labelled prompts, {len(sample)} of them (median)", statistics.median(cost_us(sample, args.rounds,
                                                                                                cold=True))),
                *rules_us[1:]]
    for (name, rules_cost), (cpu, wall) in zip(rules_us, measured, strict=True):
        print(f"  {name:<44} {rules_cost:8.1f} us {cpu / 1000:12.2f} ms {wall / 1000:8.2f} ms {cpu / rules_cost:9.0f}x")

    if args.text_classifier == "synthetic":
        return  # random weights: its decisions say nothing
    table: dict[tuple[str, str], Counter] = {}
    for case in CASES:
        for stage in case.stages:
            for tier in policy.TIERS:
                result = classifier.check(case.text, tier, stage)
                table.setdefault((case.label, tier), Counter())[result.category or "allowed"] += 1
    print(f"  classifier decisions on the labelled set (threshold {classifier.threshold}):")
    print(f"  {'label':<8} {'tier':<5} " + " ".join(f"{o:>16}" for o in OUTCOMES))
    for label in ("benign", "adult", "floor"):
        for tier in policy.TIERS:
            row = table.get((label, tier), Counter())
            print(f"  {label:<8} {tier:<5} " + " ".join(f"{row[o]:>16}" for o in OUTCOMES))


if __name__ == "__main__":
    raise SystemExit(main())
