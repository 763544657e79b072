-- grain: one row per distinct word 13-gram (hashed) of an evaluation text of 13 words or more, with that text
-- key: (text, source, kind, ngram)
-- empty: when no evaluation text has 13 words
-- invariants: n_grams is the text's count of distinct 13-grams; words are the kalm_norm'ed text split on spaces,
--   each hashed (kalm_word_hashes); built once per version of the evaluation split, read by every
--   decontamination (marts.contamination's containment rule)
-- macros: kalm_word_hashes, kalm_ngrams (kalm_core/pairs.py)

with evaluation_texts as (
    select *, kalm_word_hashes(text) as words from {{ ref('marts.evaluation_texts') }}
),

grams as (
    select text, source, kind, unnest(list_distinct(kalm_ngrams(words))) as ngram
    from evaluation_texts
    where len(words) >= 13
)

select text, source, kind, ngram, count(*) over (partition by text, source, kind) as n_grams
from grams
order by text, source, kind, ngram
