"""Content policy: the hard floor (sexual content involving minors, refused in every tier) and the
caller's tier (`sfw` also refuses explicit sexual text), applied to any text a model reads or writes.

The rules are data (configuration/policy.json); this module only normalises text and applies them.
Normalisation undoes the usual evasions: NFKC (full-width, mathematical and circled letters), case
folding, invisible characters, accents, look-alike letters from other scripts, digits and symbols
for letters ("ch1ld"), letters spread out or split by punctuation ("c h i l d", "n.u.d.e"),
stretched letters ("teeeen") and numbers written as words ("f1fteen-year-old").

A decision names its category, rule, stage and tier and never the text that matched, so it can be
logged, counted and returned to a caller. Decisions are counted in this process
(`decision_counts`); `add_listener` lets a metrics registry follow them.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import accumulate, groupby
from typing import Any, NamedTuple

from common.errors import ContentPolicyRefused
from common.metrics import process_metrics
from configuration import CONFIG_DIR

log = logging.getLogger(__name__)

FLOOR = "sexual_minors"          # category of the hard floor
EXPLICIT = "sexual_explicit"     # category of the sfw tier
TIERS = ("sfw", "nsfw")

_MINOR, _FLOOR_TERM, _EXPLICIT, _SUGGESTIVE = "minor", "floor", "explicit", "suggestive"


class TierError(ValueError):
    """A tier field holds a value that is not a tier (the caller answers 400 naming `field`)."""

    def __init__(self, field: str, value: object):
        super().__init__(f"{field} must be one of {list(TIERS)}, got {value!r}")
        self.field = field


@dataclass(frozen=True)
class Decision:
    """The outcome of one check. `rule` says which kind of rule refused (floor_term, cooccurrence,
    explicit_term, classifier), never what matched."""
    allowed: bool
    stage: str
    tier: str
    category: str | None = None
    rule: str | None = None
    ran: bool = True              # False: a check that was asked for and could not run (no classifier)

    @property
    def outcome(self) -> str:
        if not self.ran:
            return "not_run"
        return "allowed" if self.allowed else "refused"

    @property
    def message(self) -> str:
        """'content policy: <category>' (what a failed job's error_message carries)."""
        return f"content policy: {self.category}"

    def public(self) -> dict:
        return {"check": "text", "stage": self.stage, "tier": self.tier, "outcome": self.outcome,
                "category": self.category, "rule": self.rule}


def resolve_tier(default: str, *, content_type: object = None, content_tier: object = None,
                 sfw_mode: object = None, nsfw_enforce: object = None) -> str:
    """The tier a request asks for. `content_type` (queued jobs) and `content_tier` (chat) name it;
    `sfw_mode` true asks for sfw, false for nsfw; `nsfw_enforce` true asks for nsfw. When the fields
    disagree the stricter tier (sfw) wins; when none is given, `default` (CONTENT_TIER_DEFAULT)."""
    asked = set()
    for field, value in (("content_type", content_type), ("content_tier", content_tier)):
        if value is None:
            continue
        if value not in TIERS:
            raise TierError(field, value)
        asked.add(value)
    for field, value, when_true, when_false in (("sfw_mode", sfw_mode, "sfw", "nsfw"),
                                                ("nsfw_enforce", nsfw_enforce, "nsfw", None)):
        if value is None:
            continue
        if not isinstance(value, bool):
            raise TierError(field, value)
        chosen = when_true if value else when_false
        if chosen:
            asked.add(chosen)
    if default not in TIERS:
        raise TierError("CONTENT_TIER_DEFAULT", default)
    if not asked:
        return default
    return "sfw" if "sfw" in asked else "nsfw"


def _runs(word: str) -> tuple[str, ...]:
    """A word and its stretched-letter readings ("teeeen" -> "teeen", "ten")."""
    if _DOUBLE.search(word) is None:
        return (word,)
    groups = [(ch, len(list(run))) for ch, run in groupby(word)]
    if len(groups) == len(word):
        return (word,)
    two = "".join(ch * min(n, 2) for ch, n in groups)
    one = "".join(ch for ch, _ in groups)
    return (word, two, one) if two != word else (word, one)


class _Word(NamedTuple):
    """What one whitespace-separated chunk of normalised text contributes (cached per chunk)."""
    primary: str            # its skeleton, punctuation removed: what joins, negation and phrases compare
    kinds: frozenset        # the term kinds it matches on its own ("minor@de": only with German evidence)
    joinable: bool          # it can start a join with the next words ("ch ild", or the characters of "子供")
    number: bool            # a part of it is a number word ("fifteen", "f1fteen-year-old", "quince", "十")
    digit: bool             # it contains a digit
    spread: bool            # a single letter of a spaced script ("c h i l d" read as one word)
    weight: float           # how far it moves the window: 1 a word, less a character of an unspaced script
    clause_end: bool        # it ends with sentence punctuation (a negation does not reach past it)
    comma: bool             # it ends with a comma ("No, the child ..." is no negation)
    forms: frozenset        # every skeleton it was looked up as ("b3" as "be"): what phrases compare


_DOUBLE = re.compile(r"(.)\1")
_TENS = re.compile(r"[2-9]0")
_UNIT = re.compile(r"[1-9](?!\d)")
_HAS_LETTER = re.compile(r"[^\W\d_]")
_HAS_DIGIT = re.compile(r"\d")
_WORD = re.compile(r"\S+")
_CLAUSE_END = frozenset(".;:!?。！？؟।")  # a chunk ending with one ends a sentence
_WORD_CACHE_SIZE = 1 << 16
_RELEASE_AFTER = (" ", "\n", "\t", "。", "，", "、", "！", "？", "；", "：")
EVIDENCE_REACH = 4  # words either side (same sentence) in which a language's evidence decides a word of it
_LONE_ZERO = re.compile(r"(?<!\d)0(?!\d)")  # "п0рн0": a zero between letters stands for o

# Scripts written without spaces between words (Han, kana, Thai): each character becomes a chunk of its
# own, terms are found by joining consecutive chunks, and a character moves the window by less than a word.
_UNSPACED = re.compile("([\u0e00-\u0e7f\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")
_UNSPACED_WEIGHT = {"thai": 0.25, "cjk": 0.5}
# Combining marks removed (accents of Latin, Greek, Cyrillic, Vietnamese; Arabic vowel signs and hamza
# carriers); the marks of other scripts (Devanagari, Thai, kana voicing) are letters' parts and stay.
_DROPPED_MARKS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
                            "\u064b-\u065f\u0670\u06d6-\u06ed]")
_DIGIT_ZEROS = (0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6, 0x0D66,
                0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x17E0, 0x1810)
_DIGITS: dict[int | str, str] = {zero + i: str(i) for zero in _DIGIT_ZEROS for i in range(10)}
_CJK_NUMERALS = {"〇": 0, "零": 0, "一": 1, "二": 2, "两": 2, "兩": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7,
                 "八": 8, "九": 9, "十": 10}
_CJK_NUMBER = re.compile("(?<![^\\W_])(?:([一二两兩三四五六七八九]) )?十(?: ([一二三四五六七八九]))?(?![^\\W_])"
                         "|(?<![^\\W_])([〇零一二两兩三四五六七八九])(?![^\\W_])")


class _Spacer(dict):
    """A str.translate table that sets each character of an unspaced script apart (" 子 "), built lazily."""

    def __missing__(self, code: int) -> str:
        if len(self) >= _WORD_CACHE_SIZE:  # bounded: a text of many distinct characters cannot grow it forever
            self.clear()
        self[code] = chr(code) if _UNSPACED.match(chr(code)) is None else f" {chr(code)} "
        return self[code]


_SPACER = _Spacer()
_CYRILLIC_GREEK = re.compile("[\u0370-\u03ff\u0400-\u052f\u1f00-\u1fff]")


def _script(char: str) -> str:
    code = ord(char)
    if 0x0400 <= code <= 0x052F:
        return "cyrillic"
    if 0x0370 <= code <= 0x03FF or 0x1F00 <= code <= 0x1FFF:
        return "greek"
    return "latin" if "a" <= char <= "z" else "other"


class Rules:
    """configuration/policy.json (the language-independent parts and English) and configuration/policy/
    <lang>.json (each other language's words and age expressions), compiled for matching. Every language's
    words apply to every text: a text in several languages is judged as a whole."""

    def __init__(self, data: dict, languages: Sequence[dict] = ()):
        norm = data["normalisation"]
        self.languages = ("en", *(lang["language"] for lang in languages))
        self._invisible = {ord(c): None for c in norm["invisible"]}
        confusables = dict(norm["confusables"])
        fold: dict[int | str, str] = dict(_DIGITS)
        for lang in languages:
            fold.update(lang.get("letter_fold", {}))
        self._letters = str.maketrans(fold)
        # Look-alikes: Latin-script look-alikes (small capitals, ø, ł) always read as Latin; Cyrillic and
        # Greek letters are letters of their languages and read as Latin only inside a mostly Latin word
        # ("сhild"); Latin look-alikes inside a mostly Cyrillic or Greek word read as that script ("пoрнo").
        own = {c for c in confusables if _script(c) in ("cyrillic", "greek")}
        self._to_latin = str.maketrans(confusables)
        self._latin_only = str.maketrans({c: v for c, v in confusables.items() if c not in own})
        self._to_script = {"cyrillic": str.maketrans(norm["to_cyrillic"]), "greek": str.maketrans(norm["to_greek"])}
        self._leet_chars = "".join(norm["leet"])
        escaped = re.escape(self._leet_chars)
        self._drop_all = re.compile(r"[^a-z0-9]")
        self._drop_keep_leet = re.compile(f"[^a-z0-9{escaped}]")
        self._split_parts = re.compile(f"[^a-z0-9{escaped}]+")
        self._skeleton = str.maketrans({**norm["leet"], **norm["fold"]})
        self.contexts = data["contexts"]
        self.stages = data["stages"]
        self.tiers = tuple(data["tiers"])

        sources = [("en", data), *((lang["language"], lang) for lang in languages)]
        self.terms: dict[str, set[str]] = {}
        self.stems: dict[str, set[str]] = {}
        self._join_stems: set[str] = set()
        self.infixes: dict[str, set[str]] = {}      # "*누드*": inside a word (Korean writes compounds as one)
        self.phrase_terms: dict[str, list[tuple[tuple[str, ...], frozenset]]] = {}
        self.evidence: dict[str, set[str]] = {}
        longest = 1
        for code, source in sources:
            kinds = ((_FLOOR_TERM, "floor_terms"), (_MINOR, "minor_terms"), (_EXPLICIT, "explicit_terms"),
                     (_SUGGESTIVE, "suggestive_terms"))
            # "<key>_with_evidence": a word that is this kind only in this language ("Kind", "nu"): it counts
            # only in a text that also holds a marker or another term of the language.
            for kind, key in (*kinds, *((f"{k}@{code}", f"{key}_with_evidence") for k, key in kinds)):
                for term in source.get(key, ()):
                    infix, stem = term.startswith("*"), term.endswith("*")
                    pieces = self.normalise(term.strip("*")).split()
                    longest = max(longest, len(pieces))
                    skeleton = "".join(self._forms(piece)[0] for piece in pieces)
                    # A term of another language is also evidence of it ("@de"): "Kind" counts next to "nackt".
                    marks = {kind} if "@" in kind or code == "en" else {kind, f"@{code}"}
                    table = self.infixes if infix else self.stems if stem else self.terms
                    table.setdefault(skeleton, set()).update(marks)
                    if stem and len(pieces) > 1:  # "küçük kız*": found by joining words, like a phrase
                        self._join_stems.add(skeleton)
                    if len(pieces) > 1 and not stem:  # also as words in a row ("à poil", "bé gái")
                        words = tuple(self._forms(piece)[0] for piece in pieces)
                        self.phrase_terms.setdefault(words[0], []).append((words, frozenset(marks)))
            for marker in source.get("markers", ()):
                self.evidence.setdefault(self.word(self.normalise(marker)), set()).add(code)
        self.max_join = max(3, longest)
        self._stem_lengths = sorted({len(s) for s in self.stems})
        self._stem_heads = {s[:2] for s in self.stems}
        self._ascii_infixes = {k: v for k, v in self.infixes.items() if k.isascii()}
        # Every beginning of a term (also with stretched letters collapsed): a join of words that is not
        # one cannot become a term, so the join stops there.
        self._prefixes = {form[:i] for term in (*self.terms, *self._join_stems) for form in _runs(term)
                          for i in range(1, len(form) + 1)}
        self._join_stem_lengths = sorted({len(s) for s in self._join_stems})
        self._word_cache: dict[str, _Word] = {}

        number_words: dict[str, int] = {}
        for _code, source in sources:
            number_words.update({self.word(self.normalise(w)): v for w, v in source.get("number_words", {}).items()})
        self._number_values = number_words
        self._number_parts = {part for w in number_words for part in w.split()}
        self.join_stopwords = self._words(w for _c, s in sources for w in s.get("join_stopwords", ()))
        self.allow_phrases = self._phrases(p for _c, s in sources for p in s.get("allow_phrases", ()))
        self.not_terms = self._phrases(p for _c, s in sources for p in s.get("not_terms", ()))
        # Every proper beginning of a phrase that lifts a term (allow phrases, not-terms): a text ending in one
        # may yet have a term lifted by the words that follow (StreamGuard holds such a refusal back).
        lifting = [p for table in (self.allow_phrases, self.not_terms) for ps in table.values() for p in ps]
        self._open_phrases = {p[:i] for p in lifting for i in range(1, len(p))}
        self._longest_phrase = max((len(p) for p in lifting), default=1)
        neg = data["negation"]
        self.negators = self._words([*neg["negators"], *(w for lang in languages for w in lang.get("negators", ()))])
        self.fillers = self._words([*neg["fillers"], *(w for lang in languages for w in lang.get("fillers", ()))])
        self.negation_gap = int(neg["max_gap"])

        self.age_patterns = [self._age_pattern(p) for _c, s in sources for p in s.get("age_patterns", ())]
        self._numbers = self._number_pattern(self._number_values, {**norm["leet"], **norm["fold"]})
        # Letters and symbols that stand for 0 and 1 next to digits ("l5" is 15, "1o" is 10).
        as_digit = {"o": "0", "i": "1", "l": "1"}
        as_digit.update({c: {"o": "0", "i": "1"}[letter] for c, letter in norm["leet"].items()
                         if letter in ("i", "o") and not c.isdigit()})
        chars = re.escape("".join(as_digit))
        self._leet_digits = re.compile(f"(?<![a-z])[{chars}]*\\d[\\d{chars}]*(?![a-xz])")
        self._digit_of = str.maketrans(as_digit)
        self.refusal_text = data["refusal_text"]
        # The pod's own refusals name the category ("sexual_minors" reads as two terms): a conversation
        # that carries an earlier refusal back must not be refused for it.
        categories = "|".join(map(re.escape, (FLOOR, EXPLICIT)))
        self._own_refusal = re.compile(r"content\s+policy\W{0,3}(?:" + categories + ")")
        self.classifier = data["classifier"]

    def _words(self, words: Iterable[str]) -> set[str]:
        """Single words as the text's words are compared (their primaries)."""
        found = set()
        for w in words:
            chunks = self.normalise(w).split()
            if len(chunks) != 1:
                raise ValueError(f"policy word list: {w!r} is not one word")
            found.add(self._forms(chunks[0])[0])
        return found

    def _phrases(self, phrases: Iterable[str]) -> dict[str, list[tuple[str, ...]]]:
        """Phrases as tuples of primaries, keyed by their first word."""
        found: dict[str, list[tuple[str, ...]]] = {}
        for phrase in phrases:
            words = tuple(self._forms(chunk)[0] for chunk in self.normalise(phrase).split())
            found.setdefault(words[0], []).append(words)
        return found

    def _age_pattern(self, spec: dict) -> tuple:
        """(name, regex, below, number_words, requires) from a pattern: a `regex`, or the words an age is
        written with (`after`: "12 años"; `before`: "edad: 12"), with the words that make it a duration
        instead (`not_preceded_by`: "hace 12 años", `not_followed_by`: "12 años después")."""
        requires = tuple(spec.get("requires", ()))
        if "regex" not in spec:
            def alternatives(words: Iterable[str]) -> list[str]:
                return [" ".join(self.normalise(w).split()) for w in words]
            after, before = alternatives(spec.get("after", ())), alternatives(spec.get("before", ()))
            number = r"(?<![\d.,])(?P<age>\d{1,2})(?!\d|[.,]\d)"
            end = r"(?![^\W_])"
            if after:
                regex = number + r"\s*-?\s*(?:" + "|".join(map(re.escape, after)) + ")" + end
            else:
                regex = r"(?<![^\W_])(?:" + "|".join(map(re.escape, before)) + r")\s*[:=]?\s*" + number
            exclusions = "".join(f"(?<!\\b{re.escape(w)} )" for w in alternatives(spec.get("not_preceded_by", ())))
            # The lookbehinds only where the pattern can start (a digit, or the first letter of a word).
            starts = "".join(sorted({w[0] for w in before})) if before else ""
            regex = ("(?=\\d)" if after else f"(?=[{re.escape(starts)}])") + exclusions + regex
            not_followed = alternatives(spec.get("not_followed_by", ()))
            if not_followed:
                regex += r"(?!\s*(?:" + "|".join(map(re.escape, not_followed)) + r")(?![^\W_]))"
            requires = tuple(w.split()[0] for w in after or before)
        return (spec["name"], re.compile(spec["regex"] if "regex" in spec else regex), spec.get("below"),
                spec.get("number_words", True), requires)

    # -- normalisation ------------------------------------------------------------------------------------
    def normalise(self, text: str) -> str:
        """NFKC, case folding, invisible characters removed. Outside ASCII also: digits of every script as
        ASCII digits, accents stripped (Latin, Greek, Cyrillic, Arabic vowel signs), letters folded
        (Arabic ة/ى), look-alikes read in the script of the word they stand in, and each character of a
        script written without spaces (Han, kana, Thai) set apart as a chunk. Whitespace is kept, so word
        positions survive."""
        text = unicodedata.normalize("NFKC", text).casefold().translate(self._invisible)
        if not text.isascii():
            text = unicodedata.normalize("NFC", _DROPPED_MARKS.sub("", unicodedata.normalize("NFKD", text)))
            text = text.translate(self._letters)
            if _CYRILLIC_GREEK.search(text) is None:
                text = text.translate(self._to_latin)
            else:
                text = _WORD.sub(self._read_chunk, text)
            text = text.translate(_SPACER)
        return text

    def _read_chunk(self, m: re.Match) -> str:
        chunk = m.group()
        if _CYRILLIC_GREEK.search(chunk) is None:
            return chunk.translate(self._to_latin)
        counts: Counter[str] = Counter(_script(c) for c in chunk if c.isalpha())
        script = max(("cyrillic", "greek"), key=lambda s: counts[s])
        if not counts[script]:
            return chunk.translate(self._to_latin)
        if counts["latin"] > counts["cyrillic"] + counts["greek"]:
            return chunk.translate(self._to_latin)
        native = chunk.translate(self._latin_only).translate(self._to_script[script])
        return _LONE_ZERO.sub(self._to_script[script][ord("o")], native) if "0" in native else native

    def word(self, token: str) -> str:
        """The skeleton a word is compared by: digits and symbols read as letters, l and i as one."""
        return token.translate(self._skeleton)

    @staticmethod
    def _number_pattern(number_words: dict, leet: dict) -> re.Pattern:
        """Number words (as skeletons), with digits/symbols standing for their letters, as one regex: tens
        optionally followed by a unit ("twenty-one"), or one word ("f1fteen", "eleven", "quince")."""
        letters: dict[str, set[str]] = {}
        for char, letter in leet.items():
            letters.setdefault(letter, set()).add(char)

        def fuzzy(word: str) -> str:
            return "".join(f"[{re.escape(ch + ''.join(sorted(letters.get(ch, ()))))}]" for ch in word)

        tens = sorted((w for w, v in number_words.items() if v >= 20 and w.isascii()), key=len, reverse=True)
        units = sorted((w for w, v in number_words.items() if 1 <= v <= 9 and w.isascii()), key=len, reverse=True)
        single = sorted(number_words, key=len, reverse=True)
        return re.compile(
            f"(?<![^\\W_])(?:(?P<tens>{'|'.join(map(fuzzy, tens))})[\\s_-]*(?P<unit>{'|'.join(map(fuzzy, units))})"
            f"|(?P<single>{'|'.join(map(fuzzy, single))}))(?![^\\W_])")

    def age_views(self, chunks: list[str], words: list[_Word]) -> tuple[str, str]:
        """(digits as written, numbers as digits): the words with "l5" read as 15, then also with number
        words as digits ("fifteen" -> "15", "twenty one" -> "_ 21", "十 五" -> "_ 15"), joined by spaces.
        Each keeps the number of words, so a match's position is a word position."""
        if any(w.digit for w in words):
            fix = self._leet_digits.sub
            chunks = [fix(self._as_digits, c) if w.digit and c.isascii() else c
                      for c, w in zip(chunks, words, strict=True)]
        digits = " ".join(chunks)
        if not any(w.number for w in words):
            return digits, digits
        numbers = [self._numbers.sub(self._number, c) if w.number and len(c) > 1 else c
                   for c, w in zip(chunks, words, strict=True)]
        for i in range(len(numbers) - 1):  # "twenty one" written as two words
            if words[i].number and words[i + 1].number and _TENS.fullmatch(numbers[i]) and _UNIT.match(numbers[i + 1]):
                numbers[i], numbers[i + 1] = "_", str(int(numbers[i]) + int(numbers[i + 1][0])) + numbers[i + 1][1:]
        view = " ".join(numbers)
        if any(c in _CJK_NUMERALS for c in chunks):
            view = _CJK_NUMBER.sub(self._cjk_number, view)
        if len(chunks) > 1 and any(" " in w for w in self._number_values):
            view = self._numbers.sub(self._number, view)  # number words of two words ("dua belas")
        return digits, view

    @staticmethod
    def _cjk_number(m: re.Match) -> str:
        if m.group(3):
            return str(_CJK_NUMERALS[m.group(3)])
        tens, unit = m.group(1), m.group(2)
        value = (_CJK_NUMERALS[tens] if tens else 1) * 10 + (_CJK_NUMERALS[unit] if unit else 0)
        return "_ " * (len(m.group().split()) - 1) + str(value)

    def _as_digits(self, m: re.Match) -> str:
        return m.group().translate(self._digit_of)

    def _number(self, m: re.Match) -> str:
        if m.group("single"):
            return "_ " * (len(m.group().split()) - 1) + str(self._number_values[self.word(m.group("single"))])
        value = self._number_values[self.word(m.group("tens"))] + self._number_values[self.word(m.group("unit"))]
        return "_ " * (len(m.group().split()) - 1) + str(value)

    # -- matching -------------------------------------------------------------------------------------------
    def _forms(self, chunk: str, unspaced: bool = False) -> tuple[str, tuple[str, ...], list[str]]:
        """(primary, the skeletons looked up, the parts between punctuation) of one chunk."""
        if chunk.isalpha() and chunk.isascii():
            primary = self.word(chunk)
            return primary, _runs(primary), [primary]
        leet = self._leet_chars
        if chunk.isascii():
            kept, plain = self._drop_keep_leet.sub("", chunk), self._drop_all.sub("", chunk)
            split = [p for p in self._split_parts.split(chunk) if p]
        else:
            kept = "".join(c for c in chunk if c in leet or _is_letter(c))
            plain = "".join(c for c in chunk if _is_letter(c))
            split = [chunk] if unspaced else [p for p in _split(chunk, leet) if p]
        stripped = kept.strip(leet)
        forms = {plain, kept, stripped, *split}
        looked = tuple(v for form in forms if form and _HAS_LETTER.search(form) for v in _runs(self.word(form)))
        return self.word(stripped or plain), looked, [self.word(p) for p in split]

    def _stem_kinds(self, form: str) -> set[str]:
        """The kinds of every stem `form` starts with."""
        kinds: set[str] = set()
        if form[:2] not in self._stem_heads:
            return kinds
        for n in self._stem_lengths:
            if n > len(form):
                break
            kinds.update(self.stems.get(form[:n], ()))
        return kinds

    def _word(self, chunk: str) -> _Word:
        """One chunk's skeletons looked up. Cached: the same words come back in prompt after prompt."""
        cached = self._word_cache.get(chunk)
        if cached is not None:
            return cached
        ascii_chunk = chunk.isascii()
        unspaced = not ascii_chunk and len(chunk) == 1 and _UNSPACED.match(chunk) is not None
        primary, looked, parts = self._forms(chunk, unspaced)
        terms, kinds = self.terms, set[str]()
        for form in looked:
            kinds.update(terms.get(form, ()))
            if form[:2] in self._stem_heads:
                kinds.update(self._stem_kinds(form))
            for infix, marks in (self._ascii_infixes if form.isascii() else self.infixes).items():
                if infix in form:
                    kinds.update(marks)
        joinable = bool(primary) and primary not in self.join_stopwords and (
            primary in self._prefixes or _runs(primary)[-1] in self._prefixes)
        number = any(p in self._number_values or p in self._number_parts for p in parts) or (
            not ascii_chunk and chunk in _CJK_NUMERALS)
        weight = 1.0 if not unspaced else _UNSPACED_WEIGHT["thai" if "\u0e00" <= chunk <= "\u0e7f" else "cjk"]
        digit = not chunk.isalpha() and _HAS_DIGIT.search(chunk) is not None
        word = _Word(primary, frozenset(kinds), joinable, number, digit, len(primary) == 1 and not unspaced, weight,
                     chunk[-1] in _CLAUSE_END, chunk[-1] == ",", frozenset((primary, *looked)))
        if len(self._word_cache) >= _WORD_CACHE_SIZE:
            self._word_cache.clear()
        self._word_cache[chunk] = word
        return word

    def matches(self, chunks: list[str], words: list[_Word]) -> list[tuple[str, int]]:
        """[(kind, word position)] of every term found in the words, alone, joined ("ch ild", the characters
        of "子供") or spelled out ("c h i l d")."""
        found = [(kind, pos) for pos, w in enumerate(words) for kind in w.kinds]
        primaries = [w.primary for w in words]
        self._phrase_matches(words, found)
        self._joined_matches(words, primaries, found)
        self._spread_matches(words, primaries, found)
        return found

    def _phrase_matches(self, words: list[_Word], found: list[tuple[str, int]]) -> None:
        """Terms of several words, stop words included ("à poil")."""
        n = len(words)
        for pos in range(n):
            for first in words[pos].forms:
                for phrase, marks in self.phrase_terms.get(first, ()):
                    if pos + len(phrase) <= n and all(p in words[pos + i].forms for i, p in enumerate(phrase)):
                        found.extend((kind, pos) for kind in marks)

    def _joined_matches(self, words: list[_Word], primaries: list[str], found: list[tuple[str, int]]) -> None:
        """Words split by spaces: "ch ild", "nu de" (no stop word inside, so "pen is" stays two words)."""
        prefixes, stop, terms = self._prefixes, self.join_stopwords, self.terms
        n = len(primaries)
        for pos in range(n - 1):
            if not words[pos].joinable:
                continue
            joined = primaries[pos]
            for end in range(pos + 1, min(n, pos + self.max_join)):
                if not primaries[end] or primaries[end] in stop:
                    break
                joined += primaries[end]
                forms = _runs(joined)
                for form in forms:
                    if form in terms:
                        found.extend((kind, pos) for kind in terms[form])
                    for length in self._join_stem_lengths:
                        if form[:length] in self._join_stems:
                            found.extend((kind, pos) for kind in self.stems[form[:length]])
                if not any(form in prefixes for form in forms):
                    break

    def _spread_matches(self, words: list[_Word], primaries: list[str], found: list[tuple[str, int]]) -> None:
        """Letters spread out: "c h i l d", "s.e.x" written with spaces."""
        terms, n, pos = self.terms, len(primaries), 0
        while pos < n:
            end = pos
            while end < n and words[end].spread:
                end += 1
            if end - pos >= 2:
                for start in range(pos, end - 1):
                    for stop_at in range(start + 2, end + 1):
                        for form in _runs("".join(primaries[start:stop_at])):
                            found.extend((kind, start) for kind in terms.get(form, ()))
                            found.extend((kind, start) for kind in self._stem_kinds(form))
            pos = end + 1

    def found(self, chunks: list[str], words: list[_Word]) -> list[tuple[str, int]]:
        """`matches` without the words that do not count in this text: a word that is a minor only in some
        languages ("Kind") without any word of those languages, a term inside a longer word ("裸足")."""
        found = self.matches(chunks, words)
        if any("@" in kind for kind, _ in found):
            # Evidence of a language: its markers and its other terms, within EVIDENCE_REACH words of the
            # word it decides (so an English "kind" is not read as German because German follows later).
            # Letters spelled out ("n a c k t") count as one word here; evidence stays inside its sentence.
            at = list(accumulate(not (w.spread and i and words[i - 1].spread) for i, w in enumerate(words)))
            sentence = list(accumulate((i > 0 and words[i - 1].clause_end) for i in range(len(words))))
            evident: dict[str, list[int]] = {}
            for pos, w in enumerate(words):
                for code in self.evidence.get(w.primary, ()):
                    evident.setdefault(code, []).append(pos)
            for kind, pos in found:
                if kind[0] == "@":
                    evident.setdefault(kind[1:], []).append(pos)

            def counts(kind: str, pos: int) -> bool:
                if "@" not in kind:
                    return True
                base, _, code = kind.partition("@")
                return bool(base) and any(abs(at[pos] - at[near]) <= EVIDENCE_REACH and sentence[near] == sentence[pos]
                                          for near in evident.get(code, ()))
            found = [(k.partition("@")[0], pos) for k, pos in found if counts(k, pos)]
        if found and self.not_terms:
            excluded = self._covered([w.primary for w in words], self.not_terms)
            found = [(kind, pos) for kind, pos in found if pos not in excluded]
        return found

    def ages(self, chunks: list[str], words: list[_Word]) -> list[int]:
        """Word positions of every written age that indicates a minor."""
        views = self.age_views(chunks, words)
        has_digit = (_HAS_DIGIT.search(views[0]) is not None, _HAS_DIGIT.search(views[1]) is not None)
        positions = []
        for _name, pattern, below, number_words, requires in self.age_patterns:
            which = 1 if number_words else 0
            view = views[which]
            if below is not None and not has_digit[which]:
                continue
            if requires and not any(r in view for r in requires):
                continue
            for m in pattern.finditer(view):
                age = m.groupdict().get("age")
                if below is not None and age is not None and int(re.sub(r"\D", "", age)) >= below:
                    continue
                prefix = view[:m.start()]
                pos = len(prefix.split())
                if prefix and not prefix[-1].isspace():
                    pos -= 1
                positions.append(pos)
        return positions

    def scan(self, text: str) -> tuple[list[str], list[_Word]]:
        """The normalised text's chunks and what each contributes."""
        chunks = self.normalise(text).split()
        cached = self._word_cache.get
        return chunks, [cached(c) or self._word(c) for c in chunks]

    @staticmethod
    def _covered(primaries: list[str], phrases: dict[str, list[tuple[str, ...]]]) -> set[int]:
        """Positions of words inside one of `phrases`."""
        covered: set[int] = set()
        for pos, word in enumerate(primaries):
            for phrase in phrases.get(word, ()):
                if tuple(primaries[pos:pos + len(phrase)]) == phrase:
                    covered.update(range(pos, pos + len(phrase)))
        return covered

    def open_phrase(self, text: str) -> bool:
        """Whether the text's last words begin an allow phrase or a not-term that more words could complete
        ("... naked" before "eye"): the words that follow may yet lift a term of this text."""
        if not self._open_phrases:
            return False
        _chunks, words = self.scan(text)
        tail = tuple(w.primary for w in words[len(words) - (self._longest_phrase - 1):])
        return any(tail[i:] in self._open_phrases for i in range(len(tail)))

    def _negated(self, words: list[_Word], pos: int) -> bool:
        for back in range(pos - 1, max(-1, pos - 2 - self.negation_gap), -1):
            word = words[back]
            if word.clause_end:  # "No. The child ..."
                return False
            if word.primary in self.negators:
                return not word.comma
            if word.primary not in self.fillers:
                return False
        return False

    # -- decisions --------------------------------------------------------------------------------------------
    def evaluate(self, text: str, tier: str, stage: str) -> Decision:
        """Apply the floor and the tier to one text. Pure: nothing is recorded."""
        if tier not in self.tiers:
            raise TierError("tier", tier)
        context = self.contexts[self.stages[stage]]
        if "policy" in text:
            text = self._own_refusal.sub(" ", text)
        chunks, words = self.scan(text)
        found = self.found(chunks, words)
        minors = self.ages(chunks, words)
        primaries = [w.primary for w in words]
        sexual_found = any(kind in (_EXPLICIT, _SUGGESTIVE) for kind, _ in found)
        allowed_at = self._covered(primaries, self.allow_phrases) if sexual_found else set()
        sexual, explicit, floor_term = [], False, False
        for kind, pos in found:
            if context["negation"] and self._negated(words, pos):
                continue
            if kind == _FLOOR_TERM:
                floor_term = True
            elif kind == _MINOR:
                minors.append(pos)
            else:
                phrase = pos in allowed_at
                if not phrase or not context["allow_phrases_for_floor"]:
                    sexual.append(pos)
                if kind == _EXPLICIT and not phrase:
                    explicit = True
        if context["negation"]:
            minors = [pos for pos in minors if not self._negated(words, pos)]
        if floor_term:
            return Decision(False, stage, tier, FLOOR, "floor_term")
        window = context["window_words"]
        if minors and sexual:
            at = list(accumulate(w.weight for w in words)) if any(w.weight != 1.0 for w in words) else None
            if at is None:
                scene = any(abs(m - s) <= window for m in minors for s in sexual)
            else:
                scene = any(abs(at[m] - at[s]) <= window for m in minors for s in sexual)
            if scene:
                return Decision(False, stage, tier, FLOOR, "cooccurrence")
        if tier == "sfw" and explicit:
            return Decision(False, stage, tier, EXPLICIT, "explicit_term")
        return Decision(True, stage, tier)

    def refusal(self, category: str) -> str:
        return self.refusal_text.format(category=category)


def _split(chunk: str, keep: str) -> list[str]:
    """The parts of a chunk between characters that are neither letters, digits, marks nor in `keep`."""
    parts, part = [], []
    for c in chunk:
        if c in keep or _is_letter(c):
            part.append(c)
        elif part:
            parts.append("".join(part))
            part = []
    if part:
        parts.append("".join(part))
    return parts


def _is_letter(char: str) -> bool:
    """A letter, a digit or a letter's mark, of any script."""
    return char.isalnum() or unicodedata.category(char)[0] == "M"


LANGUAGE_DIR = CONFIG_DIR / "policy"


@cache
def rules() -> Rules:
    with open(CONFIG_DIR / "policy.json", encoding="utf-8") as fh:
        data = json.load(fh)
    languages = []
    for path in sorted(LANGUAGE_DIR.glob("*.json")):
        with open(path, encoding="utf-8") as fh:
            languages.append(json.load(fh))
    return Rules(data, languages)


# ---- recording ---------------------------------------------------------------------------------------------
_counts: Counter = Counter()
_counts_lock = threading.Lock()
_listeners: list[Callable[[Decision], None]] = []


def add_listener(listener: Callable[[Decision], None]) -> None:
    """Call `listener(decision)` for every recorded decision (a metrics counter, an audit sink)."""
    with _counts_lock:
        _listeners.append(listener)


def record(decision: Decision, job_id: str | None = None) -> Decision:
    """Count a decision and log it (refusals at WARNING) without the text."""
    labels = (decision.outcome, decision.category or "none", decision.stage, decision.tier)
    with _counts_lock:
        _counts[labels] += 1
        listeners = list(_listeners)
    process_metrics().policy_decisions.labels(*labels).inc()
    for listener in listeners:
        try:
            listener(decision)
        except Exception:  # a broken metrics sink must not change a policy decision
            log.exception("content policy listener failed")
    level = logging.WARNING if not decision.allowed else logging.DEBUG
    log.log(level, "content policy %s: category=%s rule=%s stage=%s tier=%s%s", decision.outcome,
            decision.category or "none", decision.rule or "none", decision.stage, decision.tier,
            f" job={job_id}" if job_id else "")
    return decision


def decision_counts() -> dict[tuple[str, str, str, str], int]:
    """(outcome, category, stage, tier) -> decisions recorded in this process."""
    with _counts_lock:
        return dict(_counts)


# ---- the checks callers use --------------------------------------------------------------------------------
def check_text(texts: str | Iterable[str | None], *, tier: str, stage: str, job_id: str | None = None) -> Decision:
    """Check one text, or several read together (a prompt and its compel weights, a conversation's
    messages: joined with line breaks so the window spans them), and record the decision."""
    if isinstance(texts, str):
        text = texts
    else:
        text = "\n".join(t for t in texts if t)
    return record(rules().evaluate(text, tier, stage), job_id)


def minor_indicated(text: str, stage: str) -> bool:
    """Whether the rules see a minor in `text` as read at `stage` (a minor word or a written age under 18;
    negation counts where the stage's reader counts it). The text classifier pairs its sexual score with
    this (workers/runtime/text_safety.py)."""
    r = rules()
    chunks, words = r.scan(text)
    minors = r.ages(chunks, words) + [pos for kind, pos in r.found(chunks, words) if kind == _MINOR]
    if minors and r.contexts[r.stages[stage]]["negation"]:
        minors = [pos for pos in minors if not r._negated(words, pos)]
    return bool(minors)


def window_words(stage: str) -> int:
    """The co-occurrence window, in words, of the reader of `stage` (image: a whole prompt; language: shorter)."""
    r = rules()
    return int(r.contexts[r.stages[stage]]["window_words"])


def require(decision: Decision) -> Decision:
    """`decision` when it allows; ContentPolicyRefused (422 at HTTP, a failed job elsewhere) when not."""
    if not decision.allowed:
        raise ContentPolicyRefused(decision.category or EXPLICIT, decision.stage, decision.tier, decision.rule)
    return decision


def check_generation_prompt(body: dict, default_tier: str, job_id: str | None = None) -> tuple[str, Decision]:
    """(tier, decision) for a generation body (POST /generate, a queued job, the orchestrator's POST /jobs):
    `prompt` and `compel_weights` read together, as the text encoder reads them. Raises ContentPolicyRefused."""
    tier = resolve_tier(default_tier, content_tier=body.get("content_tier"))
    decision = check_text([body.get("prompt"), body.get("compel_weights")], tier=tier, stage="prompt", job_id=job_id)
    return tier, require(decision)


def chat_tier(inputs: dict, default_tier: str) -> str:
    """The tier of a chat request from its policy inputs (`sfw_mode`, `content_tier`, `nsfw_enforce`)."""
    return resolve_tier(default_tier, content_tier=inputs.get("content_tier"), sfw_mode=inputs.get("sfw_mode"),
                        nsfw_enforce=inputs.get("nsfw_enforce"))


def conversation(messages: Sequence[Mapping[str, Any]] | None, text: str | None) -> list[str]:
    """The texts a chat model reads: every message's content (system prompts included), or a raw prompt."""
    if messages is not None:
        return [m["content"] for m in messages]
    return [text or ""]


def job_entry(tier: str, *checks: Decision) -> dict:
    """What a job record notes (`metadata.content_policy`): the tier and each check that ran, with its outcome."""
    return {"tier": tier, "checks": [c.public() for c in checks]}


def prompt_entry(tier: str) -> dict:
    """The record entry of a generation job admitted past its prompt check (`check_generation_prompt`)."""
    return job_entry(tier, Decision(True, "prompt", tier))


def refusal_text(category: str) -> str:
    """The reply that replaces a chat or enhancement output that crossed the policy."""
    return rules().refusal(category)


class StreamGuard:
    """Checks a streamed reply as it grows and releases only whole words that passed.

    `feed(delta)` returns the text that may be sent now (complete words, checked with the words before
    them; in Chinese and Japanese, up to the last punctuation mark) or None once the reply has crossed the
    policy: the caller then sends `refusal_text(...)` and ends the stream; nothing that crossed was sent.
    `finish()` checks and releases the rest. Each step
    checks only the tail a new word can form a match with (the co-occurrence window plus the negation
    and join reach), so a long reply costs linear time."""

    def __init__(self, tier: str, stage: str = "chat_output", job_id: str | None = None):
        self.tier, self.stage, self.job_id = tier, stage, job_id
        self._rules = rules()
        context = self._rules.contexts[self._rules.stages[stage]]
        self._tail_words = context["window_words"] + self._rules.negation_gap + self._rules.max_join + 2
        self._text = ""
        self._sent = 0
        self.decision: Decision | None = None

    def _check(self, end: int) -> bool | None:
        """True: the text up to `end` passed. False: it crossed the policy, whatever follows. None: it crosses
        as it stands, but it ends in the beginning of a phrase that lifts a term (an allow phrase, a
        not-term: "γυμνά" before "πόδια"), so the next words decide; nothing is released meanwhile."""
        start = self._tail_start(self._sent)
        text = self._text[start:end]
        decision = self._rules.evaluate(text, self.tier, self.stage)
        if decision.allowed:
            return True
        if self._rules.open_phrase(text):
            return None
        self.decision = record(decision, self.job_id)
        return False

    def _tail_start(self, end: int) -> int:
        """Offset of the `_tail_words`-th word before `end` (0 when there are fewer)."""
        low = max(0, end - 64 * self._tail_words)
        starts = [m.start() for m in _WORD.finditer(self._text, low, end)]
        if len(starts) > self._tail_words:
            return starts[-self._tail_words]
        return 0 if low == 0 or not starts else starts[0]

    def feed(self, delta: str) -> str | None:
        if self.decision is not None:
            return None
        self._text += delta
        # A word ends at whitespace; in scripts written without spaces, at a punctuation mark ("。", "，").
        boundary = max(self._text.rfind(c) for c in _RELEASE_AFTER)
        if boundary < self._sent:
            return ""
        verdict = self._check(boundary + 1)
        if verdict is False:
            return None
        if verdict is None:
            return ""
        released, self._sent = self._text[self._sent:boundary + 1], boundary + 1
        return released

    def finish(self) -> str | None:
        """Check the whole reply once more and release what is left; None when it crossed the policy."""
        if self.decision is not None:
            return None
        decision = self._rules.evaluate(self._text, self.tier, self.stage)
        self.decision = record(decision, self.job_id)
        if not decision.allowed:
            return None
        released, self._sent = self._text[self._sent:], len(self._text)
        return released
