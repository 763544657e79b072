-- grain: one row per distinct normalised evaluation text (a held-out query or relevant passage) and its source
-- key: (text, source)
-- invariants: texts are kalm_norm'ed (case, whitespace, end punctuation: kalm_core/pairs.py), the form training
--   pairs are compared in; built once per version of the evaluation split, read by every decontamination

with evaluation as (
    select * from {{ ref('marts.eval_pairs') }}
)

select distinct text, source, kind
from (
    select kalm_norm(query) as text, source, 'query' as kind from evaluation
    union all
    select kalm_norm(positive), source, 'relevant text' from evaluation
)
where text <> ''
order by text, source, kind
