"""Parse and validate LLM answers; every rejected answer keeps its raw text and a reason."""

from __future__ import annotations

import json
import re
import unicodedata

from kalm_core.synthesis.tasks import SPECS

MAX_CHARS = 8_000
_REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i cannot|i can'?t (help|assist|comply)|as an ai\b|"
                      r"i'?m unable to|i am unable to)", re.I)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")
SCRIPTS = {"Chinese": ("CJK",), "Japanese": ("HIRAGANA", "KATAKANA", "CJK"), "Korean": ("HANGUL",),
           "Russian": ("CYRILLIC",), "Arabic": ("ARABIC",), "English": ("LATIN",), "French": ("LATIN",),
           "German": ("LATIN",), "Spanish": ("LATIN",)}
_STOPWORDS = {"English": {"the", "and", "is", "of", "to", "in", "a"},
              "French": {"le", "la", "les", "et", "est", "des", "une", "du"},
              "German": {"der", "die", "das", "und", "ist", "nicht", "ein", "mit"},
              "Spanish": {"el", "la", "los", "y", "es", "de", "que", "una"}}


class Rejected(ValueError):
    """An answer that cannot be used; `reason` is one of the quarantine reasons."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _json(text: str):
    stripped = _FENCE.sub("", text.strip())
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        if _REFUSAL.search(text):
            raise Rejected("refusal", text[:80]) from None
        raise Rejected("invalid json", text[:80]) from None


def parse_instructions(text: str) -> list[str]:
    """Stage 1: a JSON list of instruction strings, normalised (whitespace, trailing period) and de-duplicated."""
    data = _json(text)
    if isinstance(data, dict) and len(data) == 1:
        data = next(iter(data.values()))
    if not isinstance(data, list) or not data:
        raise Rejected("not a list", str(type(data).__name__))
    out, seen = [], set()
    for item in data:
        if isinstance(item, str) and (s := " ".join(item.split()).rstrip(".")) and s.lower() not in seen:
            seen.add(s.lower())
            out.append(s + ".")
    if not out:
        raise Rejected("empty field", "no instruction strings")
    return out


def script_of(text: str) -> str | None:
    """The dominant Unicode script of the letters in `text`."""
    counts: dict[str, int] = {}
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            key = next((s for s in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "CYRILLIC", "ARABIC", "LATIN")
                        if s in name), "OTHER")
            counts[key] = counts.get(key, 0) + 1
    return max(counts, key=counts.get) if counts else None


def in_language(text: str, language: str) -> bool:
    """A script check, plus a stopword check between Latin-script languages."""
    scripts = SCRIPTS.get(language)
    if scripts is None:
        return True
    if script_of(text) not in scripts:
        return False
    if language in _STOPWORDS:
        words = set(re.findall(r"\w+", text.lower()))
        hits = {lang: len(words & sw) for lang, sw in _STOPWORDS.items()}
        best = max(hits.values())
        return best == 0 or hits[language] == best
    return True


def parse_example(task_type: str, text: str, params: dict) -> dict[str, str]:
    """Stage 2: the task type's JSON object with every required field a non-empty string."""
    spec = SPECS[task_type]
    data = _json(text)
    if not isinstance(data, dict):
        raise Rejected("invalid json", "not an object")
    fields = {}
    for f in spec.fields:
        value = data.get(f)
        if not isinstance(value, str) or not value.strip():
            raise Rejected("missing or empty field", f)
        fields[f] = value.strip()
    if any(_REFUSAL.match(v) for v in fields.values()):
        raise Rejected("refusal", next(v for v in fields.values() if _REFUSAL.match(v))[:80])
    if fields[spec.query_field] == fields[spec.positive_field]:
        raise Rejected("query equals positive")
    if any(len(v) > MAX_CHARS for v in fields.values()):
        raise Rejected("over-long text", f"> {MAX_CHARS} characters")
    if task_type == "bitext":
        if not in_language(fields["S1"], params["src_lang"]) or not in_language(fields["S2"], params["tgt_lang"]):
            raise Rejected("wrong language", f"expected {params['src_lang']} -> {params['tgt_lang']}")
    return fields
