"""The content policy's rules (common/policy.py, configuration/policy.json) on the labelled set and on
their parts: normalisation, ages, negation, tiers, recording, streaming."""
from __future__ import annotations

import json
import logging
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import policy
from configuration import CONFIG_DIR
from tests.policy_labelled import APP_GUARDRAIL, CASES, ROLEPLAY_TURNS

EXPECTED = {  # label -> tier -> category (None: allowed)
    "benign": {"sfw": None, "nsfw": None},
    "adult": {"sfw": policy.EXPLICIT, "nsfw": None},
    "floor": {"sfw": policy.FLOOR, "nsfw": policy.FLOOR},
}


def _id(case) -> str:
    return f"{case.label}{'-obf' if case.obfuscated else ''}:{case.text[:40]!r}"


def test_the_labelled_set_covers_every_label_plainly_and_obfuscated():
    assert len(CASES) >= 60
    for label in EXPECTED:
        assert sum(c.label == label and not c.obfuscated for c in CASES) >= 10, label
        assert sum(c.label == label and c.obfuscated for c in CASES) >= 5, label


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_labelled_case(case):
    rules = policy.rules()
    for stage in case.stages:
        for tier in policy.TIERS:
            decision = rules.evaluate(case.text, tier, stage)
            assert decision.category == EXPECTED[case.label][tier], (stage, tier, decision)
            assert decision.allowed is (decision.category is None)


def test_every_floor_violation_is_refused_and_no_benign_prompt_is():
    """The issue's figure: 100 % of floor violations refused, 0 benign refusals (every stage, both tiers)."""
    rules = policy.rules()
    def decisions(label):
        return [rules.evaluate(c.text, t, s) for c in CASES if c.label == label for s in c.stages for t in policy.TIERS]
    floor, benign = decisions("floor"), decisions("benign")
    assert floor
    assert all(d.category == policy.FLOOR for d in floor)
    assert benign
    assert all(d.allowed for d in benign)


@pytest.mark.parametrize("text", ["No sexual content involving minors. Explicit adult roleplay only.",
                                  "nobody under 18, explicit adult sex"])
def test_negation_excuses_nothing_in_an_image_prompt(text):
    """A diffusion model's text encoder reads 'minors' in 'no ... minors': negation counts only where a
    language model reads the text."""
    rules = policy.rules()
    assert rules.evaluate(text, "nsfw", "chat_input").allowed
    assert rules.evaluate(text, "nsfw", "prompt").category == policy.FLOOR
    assert rules.evaluate(text, "nsfw", "enhanced_prompt").category == policy.FLOOR


def test_a_negator_only_excuses_the_words_right_after_it():
    rules = policy.rules()
    assert rules.evaluate("she is not a child. nude", "nsfw", "chat_input").allowed
    # "but" breaks the negation: the minor after it counts.
    assert not rules.evaluate("not an adult but a child, nude", "nsfw", "chat_input").allowed
    assert not rules.evaluate("a teen with no clothes having sex", "nsfw", "chat_input").allowed


def test_the_window_decides_whether_two_words_are_one_scene():
    rules = policy.rules()
    filler = " ".join(["landscape"] * 40)
    assert not rules.evaluate(f"a child {filler} nude", "nsfw", "prompt").allowed  # image window: 60 words
    assert rules.evaluate(f"a child {filler} nude", "nsfw", "chat_input").allowed  # language window: 25
    assert not rules.evaluate("a child, " + " ".join(["landscape"] * 20) + " nude", "nsfw", "chat_input").allowed


@pytest.mark.parametrize(("text", "minor"), [
    ("a 15 year old", True), ("a 15-year-old", True), ("15yo", True), ("15 y/o", True), ("15 y.o.", True),
    ("fifteen years old", True), ("f1fteen-year-old", True), ("1 5 yo", True), ("l5 yo", True), ("age: 15", True),
    ("aged 12", True), ("under 18", True), ("under eighteen.", True), ("she's 14", True), ("i'm 16", True),
    ("who is 17, and", True), ("just turned 13", True), ("6 months old", True), ("her 15th birthday", True),
    ("a 7th grader", True), ("a seventh grader", True), ("ages 10 and 11", True),
    ("a 25 year old", False), ("twenty one years old", False), ("18yo", False), ("under 10 minutes", False),
    ("she's 5 feet tall", False), ("she's one of them", False), ("under one roof", False), ("21.5 years old", False),
    ("1.5 years old", True),
    ("ten years older than him", False), ("a 12 year old whisky", False), ("age 15.5", False),
    ("her 40th birthday", False), ("turned 30", False), ("1girl, 2boys", False),
])
def test_written_ages(text, minor):
    rules = policy.rules()
    assert bool(rules.ages(*rules.scan(text))) is minor


def test_age_pattern_speed_filters_never_hide_a_match():
    """`requires` lets a pattern skip texts without those strings: every text that matches a pattern must
    contain one of them, or the filter would hide the match."""
    data = json.loads((CONFIG_DIR / "policy.json").read_text(encoding="utf-8"))
    rules = policy.rules()
    samples = [rules.age_views(*rules.scan(t))[1] for t in (
        "age 12", "aged 9", "ages: 14", "under 16", "below 17", "not yet 18", "almost 17", "nearly 16",
        "just under 18", "under the age of 15", "i'm 15", "im 14", "i am 13", "she's 12", "he is 11", "who's 10",
        "turned 15", "turning 14", "her 12th birthday", "12 birthday", "7th grade", "a fifth grader")]
    matched = 0
    for spec in data["age_patterns"]:
        pattern = re.compile(spec["regex"])
        for sample in samples:
            for _ in pattern.finditer(sample):
                matched += 1
                if spec.get("requires"):
                    assert any(r in sample for r in spec["requires"]), (spec["name"], sample)
    assert matched >= len(samples)


@pytest.mark.parametrize(("raw", "plain"), [
    ("ＣＨＩＬＤ", "child"), ("\U0001d41c\U0001d421\U0001d422\U0001d425\U0001d41d", "child"), ("chíld", "child"),
    ("сhild", "child"), ("ch\u200bild", "child"), ("\u1d04\u029c\u026a\u029f\u1d05", "child"), ("she\u2019s", "she's"),
])
def test_normalisation_undoes_lookalikes(raw, plain):
    assert policy.rules().normalise(raw) == plain


@pytest.mark.parametrize("spelled", ["child", "ch1ld", "c h i l d", "c.h.i.l.d", "ch-ild", "ch ild", "CHILD",
                                     "chiiiild", "(child:1.3)", "k1ds", "kiddz", "t33n", "t e e n"])
def test_minor_terms_survive_spelling_evasions(spelled):
    rules = policy.rules()
    found = rules.matches(*rules.scan(spelled))
    assert "minor" in {kind for kind, _ in found}


@pytest.mark.parametrize("text", ["the pen is blue", "ten women", "often", "essex", "cocktail", "therapist",
                                  "analysis", "scunthorpe", "a kid's pen is on the desk"])
def test_words_that_contain_or_join_into_terms_are_not_read_as_them(text):
    rules = policy.rules()
    found = rules.matches(*rules.scan(text))
    assert not {kind for kind, _ in found} & {"explicit", "suggestive", "floor"}, text


def test_tier_resolution():
    assert policy.resolve_tier("sfw") == "sfw"
    assert policy.resolve_tier("nsfw") == "nsfw"
    assert policy.resolve_tier("sfw", content_type="nsfw") == "nsfw"
    assert policy.resolve_tier("nsfw", content_tier="sfw") == "sfw"
    assert policy.resolve_tier("sfw", sfw_mode=False) == "nsfw"
    assert policy.resolve_tier("sfw", content_tier="nsfw", nsfw_enforce=True) == "nsfw"
    # The fields disagree: the stricter tier wins.
    assert policy.resolve_tier("nsfw", content_tier="nsfw", sfw_mode=True) == "sfw"
    assert policy.resolve_tier("nsfw", content_type="sfw", nsfw_enforce=True) == "sfw"
    with pytest.raises(policy.TierError) as err:
        policy.resolve_tier("sfw", content_tier="adult")
    assert err.value.field == "content_tier"
    with pytest.raises(policy.TierError):
        policy.resolve_tier("sfw", sfw_mode="yes")
    with pytest.raises(policy.TierError):
        policy.rules().evaluate("text", "unfiltered", "prompt")


def test_the_floor_has_no_switch():
    """Nothing in the rules or the settings turns the floor off: every tier and stage refuses it."""
    from configuration.settings import documented_variables

    assert not [name for name in documented_variables() if "FLOOR" in name or "POLICY" in name and "OFF" in name]
    data = json.loads((CONFIG_DIR / "policy.json").read_text(encoding="utf-8"))
    assert set(data["tiers"]) == set(policy.TIERS)
    for stage in data["stages"]:
        for tier in policy.TIERS:
            assert policy.rules().evaluate("lolicon", tier, stage).category == policy.FLOOR


def test_a_decision_is_recorded_and_logged_without_the_text(caplog):
    seen = []
    policy.add_listener(seen.append)
    before = policy.decision_counts()
    with caplog.at_level(logging.DEBUG, logger="common.policy"):
        refused = policy.check_text(["a naked child", None, "(compel weights)"], tier="nsfw", stage="prompt",
                                    job_id="job-7")
        allowed = policy.check_text("a lighthouse at dusk", tier="sfw", stage="chat_input")
    after = policy.decision_counts()
    assert (refused.category, refused.rule, refused.message) == (policy.FLOOR, "cooccurrence",
                                                                 "content policy: sexual_minors")
    assert allowed.allowed
    for key in (("refused", policy.FLOOR, "prompt", "nsfw"), ("allowed", "none", "chat_input", "sfw")):
        assert after[key] == before.get(key, 0) + 1
    assert seen[-2:] == [refused, allowed]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "sexual_minors" in logged
    assert "job=job-7" in logged
    for word in ("naked", "child", "lighthouse", "compel"):
        assert word not in logged
    assert "naked" not in json.dumps(refused.public())
    assert "child" not in json.dumps(refused.public())


def test_the_refusal_reply_names_the_policy_and_category():
    text = policy.refusal_text(policy.FLOOR)
    assert "content policy" in text
    assert policy.FLOOR in text
    assert policy.rules().evaluate(text, "sfw", "chat_output").allowed


def _stream(text: str, cuts: list[int], tier: str = "nsfw") -> tuple[str, policy.StreamGuard, bool]:
    guard = policy.StreamGuard(tier)
    sent, pieces, last = [], [], 0
    for cut in sorted(set(c % (len(text) + 1) for c in cuts)) + [len(text)]:
        pieces.append(text[last:cut])
        last = cut
    for piece in pieces:
        out = guard.feed(piece)
        if out is None:
            return "".join(sent), guard, False
        sent.append(out)
    out = guard.finish()
    if out is None:
        return "".join(sent), guard, False
    sent.append(out)
    return "".join(sent), guard, True


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from([c for c in CASES if "chat_input" in c.stages]),
       prefix=st.sampled_from(["", "Sure. Here is the scene you asked for: ", "Once upon a time, "]),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_a_stream_is_judged_like_the_whole_reply_and_never_sends_what_crossed(case, prefix, cuts):
    text = prefix + case.text + " The end."
    whole = policy.rules().evaluate(text, "nsfw", "chat_output")
    sent, guard, completed = _stream(text, cuts)
    assert completed is whole.allowed
    if completed:
        assert sent == text
    else:
        assert guard.decision is not None
        assert guard.decision.category == whole.category
        assert text.startswith(sent)
        assert policy.rules().evaluate(sent, "nsfw", "chat_output").allowed  # what went out is clean


@pytest.mark.parametrize("text", ["τα παιδιά περπατούν με γυμνά πόδια στην άμμο The end.",  # not-term: barefoot
                                  "The child saw the comet with the naked eye. The end."])  # allow phrase
def test_a_stream_cut_inside_a_lifting_phrase_is_not_refused_for_its_first_word(text):
    """The whole text passes because a phrase lifts its term; a stream cut right after the phrase's first word
    ("γυμνά ", "naked ") must wait for the next word rather than refuse (found by the property test above)."""
    assert policy.rules().evaluate(text, "nsfw", "chat_output").allowed
    for cut in range(len(text) + 1):
        sent, _guard, completed = _stream(text, [cut])
        assert completed, cut
        assert sent == text, cut


def test_a_stream_that_leaves_a_lifting_phrase_unfinished_is_refused():
    text = "The child stood there naked and cold."
    assert not policy.rules().evaluate(text, "nsfw", "chat_output").allowed
    for cut in range(len(text) + 1):
        sent, guard, completed = _stream(text, [cut])
        assert not completed, cut
        assert "naked" not in sent, cut
        assert guard.decision.category == policy.FLOOR, cut


def test_a_long_stream_checks_only_its_tail():
    """A minor mentioned far back (beyond the window) does not taint a later sexual word; a recent one does."""
    long_ago = "The kids left for camp. " + "We walked along the quiet harbour for hours. " * 10
    sent, _, completed = _stream(long_ago + "Later that night they lay naked together.", list(range(0, 900, 7)))
    assert completed
    sent, guard, completed = _stream("We walked. " * 30 + "The child was naked.", list(range(0, 900, 5)))
    assert not completed
    assert "naked" not in sent
    assert guard.decision.category == policy.FLOOR


def test_a_conversation_carrying_an_earlier_refusal_is_not_refused_for_it():
    history = ["tell me a story", policy.refusal_text(policy.FLOOR), "ok, a story about a lighthouse then",
               "content policy: sexual_explicit"]
    assert policy.rules().evaluate("\n".join(history), "sfw", "chat_input").allowed


# ---- languages (configuration/policy/<lang>.json, tests/policy_labelled_data/<lang>.json) ------------------

REQUIRED_LANGUAGES = {"en", "es", "pt", "fr", "de", "it", "nl", "pl", "ru", "uk", "tr", "ar", "hi", "id", "vi", "th",
                      "zh", "ja", "ko"}


def test_the_labelled_set_covers_twenty_languages_with_every_label():
    languages = {c.language for c in CASES}
    assert REQUIRED_LANGUAGES <= languages
    assert len(languages) >= 20
    assert languages == set(policy.rules().languages)  # every language with rules is measured
    for code in languages:
        plain = [c for c in CASES if c.language == code and not c.obfuscated]
        assert sum(c.label == "floor" for c in plain) >= 10, code
        assert sum(c.label == "benign" for c in plain) >= 10, code
        assert sum(c.label == "adult" for c in plain) >= 5, code
        assert sum(c.label == "floor" and c.obfuscated for c in CASES if c.language == code) >= 3, code


def test_every_language_file_names_its_sources_and_holds_the_three_ingredients():
    for path in sorted((CONFIG_DIR / "policy").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["language"] == path.stem, path.name
        assert data["name"], path.name
        assert len(data["sources"]) > 40, path.name
        assert data["minor_terms"], path.name
        assert data["age_patterns"], path.name
        assert data["explicit_terms"] or data.get("explicit_terms_with_evidence"), path.name
        for pattern in data["age_patterns"]:  # each compiles and names the age it compares
            assert pattern.get("below") == 18
            assert ("regex" in pattern or pattern.get("after") or pattern.get("before"))


@pytest.mark.parametrize(("raw", "plain"), [
    ("РЕБЁНОК", "ребенок"),              # Cyrillic stays Cyrillic (ё read as е)
    ("пoрнo", "порно"),                  # Latin o inside a Russian word read as Cyrillic
    ("п0рн0", "порно"),                  # a lone zero inside a Cyrillic word
    ("сhild", "child"),                  # a Cyrillic с inside an English word read as Latin
    ("Παιδί", "παιδι"),                  # Greek stays Greek, accents stripped
    ("طفلَةٌ", "طفله"),                   # Arabic vowel signs stripped, ة read as ه
    ("أطفال", "اطفال"),                  # hamza carriers
    ("子供", " 子  供 "),                  # characters of unspaced scripts set apart
    ("١٢ ๑๒ १२", "12 12 12"),            # digits of other scripts
    ("niño", "nino"),
])
def test_normalisation_reads_each_script_as_itself(raw, plain):
    assert policy.rules().normalise(raw) == plain


@pytest.mark.parametrize(("text", "minor"), [
    ("una niña de 12 años", True), ("tiene quince años", True), ("hace 12 años", False),
    ("treinta y dos años", False), ("tem 13 anos", True), ("há 13 anos", False), ("elle a 14 ans", True),
    ("il y a 14 ans", False), ("12 Jahre alt", True), ("die 12-jährige", True), ("vor 12 Jahren", False),
    ("ha 12 anni", True), ("12 anni fa", False), ("een meisje van 12 jaar", True), ("12 jaar geleden", False),
    ("ma 12 lat", True), ("12 lat temu", False), ("ей 12 лет", True), ("12 лет назад", False),
    ("12-летняя", True), ("їй 12 років", True), ("12 років тому", False), ("12 yaşında", True),
    ("on iki yaşında", True), ("عمرها 12 سنة", True), ("منذ 12 عاما", False), ("خمسة عشر عاما", True),
    ("12 साल की", True), ("12 साल पहले", False), ("berusia 12 tahun", True), ("dua belas tahun", True),
    ("12 tahun lalu", False), ("12 tuổi", True), ("mười lăm tuổi", True), ("hai mươi lăm tuổi", False),
    ("อายุ 12 ปี", True), ("10 ขวบ", True), ("12岁", True), ("十五岁", True), ("二十五岁", False),
    ("十二歳", True), ("12살", True), ("열두 살", True), ("15세기", False), ("스물다섯 살", False),
    ("12 χρονών", True), ("πριν από 12 χρόνια", False), ("δεκαπέντε χρονών", True),
])
def test_written_ages_in_other_languages(text, minor):
    rules = policy.rules()
    assert bool(rules.ages(*rules.scan(text))) is minor


def test_a_word_that_is_a_minor_only_in_one_language_needs_that_language():
    """'kind' is German and Dutch for child and an English adjective: it counts only next to German or Dutch."""
    rules = policy.rules()
    assert rules.evaluate("a kind woman, nude", "nsfw", "prompt").allowed
    assert rules.evaluate("Kind nackt", "nsfw", "prompt").category == policy.FLOOR
    assert rules.evaluate("een kind, naakt", "nsfw", "prompt").category == policy.FLOOR
    assert rules.evaluate("K i n d  n a c k t", "nsfw", "prompt").category == policy.FLOOR


@pytest.mark.parametrize("text", ["裸足の子供たちが砂浜を走る", "孩子们的裸眼视力检查", "เด็กๆ เดินเปลือยเท้า",
                                  "los niños juegan descalzos", "die Kinder haben Lust auf Eis",
                                  "les enfants marchent pieds nus", "anak muda di pantai, bugil"])
def test_compounds_that_contain_a_term_are_not_that_term(text):
    """'裸' (naked) inside '裸足' (barefoot); 'Lust' (desire) in 'Lust auf Eis'; 'anak muda' (young people,
    adults) is not 'anak' (child)."""
    assert policy.rules().evaluate(text, "nsfw", "prompt").allowed, text


# ---- the app's roleplay: negated minor context (issue 17 item 3) ------------------------------------------

@pytest.mark.parametrize("negation", [
    APP_GUARDRAIL, "No minors.", "Nobody here is underage.", "All characters are adults.",
    "There are no minors in this story.", "None of the characters are minors.", "No one under 18 appears.",
    "Sin menores de edad.", "Es gibt keine Minderjährigen.", "Il n'y a aucun mineur.", "Нет несовершеннолетних.",
    "Tidak ada anak di bawah umur.", "没有任何未成年人。",
])
@pytest.mark.parametrize("where", ["system", "middle", "last"])
def test_negated_minor_context_is_not_a_minor_in_any_message(negation, where):
    turns = list(ROLEPLAY_TURNS)
    at = {"system": 0, "middle": 8, "last": len(turns) - 1}[where]
    turns[at] = turns[at] + " " + negation
    decision = policy.rules().evaluate("\n".join(turns), "nsfw", "chat_input")
    assert decision.allowed, (negation, where, decision)


@pytest.mark.parametrize("minor", ["She is 15.", "she's 14", "The girl is a 12-year-old.", "Ella tiene 13 años.",
                                   "Ей 14 лет.", "彼女は14歳。", "A kid watches."])
def test_a_stated_minor_next_to_sexual_content_is_refused_despite_the_guardrail(minor):
    turns = list(ROLEPLAY_TURNS)
    turns.insert(len(turns) - 2, minor)  # next to the explicit turns
    decision = policy.rules().evaluate("\n".join(turns), "nsfw", "chat_input")
    assert decision.category == policy.FLOOR, minor


# ---- properties across languages --------------------------------------------------------------------------

_FLOOR = [c for c in CASES if c.label == "floor" and "prompt" in c.stages]
_BENIGN = [c for c in CASES if c.label == "benign" and "prompt" in c.stages]
_ADULT = [c for c in CASES if c.label == "adult" and "prompt" in c.stages]
# Benign texts with no sexual term (some benign texts hold one, "a sexy red sports car", and are benign alone).
_BENIGN_PLAIN = [c for c in _BENIGN
                 if not {k for k, _ in policy.rules().found(*policy.rules().scan(c.text))} & {"explicit", "suggestive"}]
_INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff"]


@settings(max_examples=150, deadline=None)
@given(floor=st.sampled_from(_FLOOR), other=st.sampled_from(_BENIGN + _ADULT), first=st.booleans())
def test_a_text_in_several_languages_is_judged_as_a_whole(floor, other, first):
    """A floor violation stays refused whatever another language's text stands next to it."""
    text = f"{floor.text}\n{other.text}" if first else f"{other.text}\n{floor.text}"
    assert policy.rules().evaluate(text, "nsfw", "prompt").category == policy.FLOOR


@settings(max_examples=150, deadline=None)
@given(pair=st.sampled_from(["benign", "adult"]), data=st.data())
def test_mixing_languages_invents_no_minor_and_no_sexual_term(pair, data):
    """Two benign sentences side by side (in any two languages) are allowed in both tiers: the word lists do
    not combine into a sexual term neither holds; two adult sentences are allowed in nsfw: no minor is
    invented (a word that is a minor only in one language, 'kind', needs that language in its sentence)."""
    cases = _BENIGN_PLAIN if pair == "benign" else _ADULT
    a, b = data.draw(st.sampled_from(cases)), data.draw(st.sampled_from(cases))
    tier = "sfw" if pair == "benign" else "nsfw"
    assert policy.rules().evaluate(f"{a.text}. {b.text}", tier, "prompt").allowed, (a.text, b.text)


@settings(max_examples=150, deadline=None)
@given(case=st.sampled_from(_FLOOR), data=st.data())
def test_invisible_characters_and_case_never_hide_a_floor_violation(case, data):
    text = case.text
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)), reverse=True)
    for cut in cuts:
        text = text[:cut] + data.draw(st.sampled_from(_INVISIBLE)) + text[cut:]
    text = data.draw(st.sampled_from([str, str.upper, str.title, str.swapcase]))(text)
    assert policy.rules().evaluate(text, "nsfw", "prompt").category == policy.FLOOR, text


def test_a_stream_without_spaces_is_released_at_punctuation_and_stopped_before_a_crossing():
    """Chinese and Japanese have no spaces: a streamed reply is released up to its last punctuation mark,
    checked with what came before, and a crossing sentence is never sent."""
    guard = policy.StreamGuard("nsfw")
    assert [guard.feed(p) for p in ["孩子们", "在公园", "里玩。", "然后"]] == ["", "", "孩子们在公园里玩。", ""]
    assert guard.finish() == "然后"
    guard = policy.StreamGuard("nsfw")
    sent = [guard.feed(p) for p in ["从前有一座山。", "一个十二岁", "的女孩", "裸体。"]]
    assert sent == ["从前有一座山。", "", "", None]
    assert guard.decision.category == policy.FLOOR
