-- grain: one row per distinct normalised evaluation text (a query or relevant text) and the evaluation set it is of:
--   the held-out split's sources and the profile's evaluation sets (marts.evaluation_sets: its BEIR folders and
--   MTEB tasks)
-- key: (text, source, kind)
-- invariants: texts are kalm_norm'ed (case, whitespace, end punctuation: kalm_core/pairs.py), the form training
--   pairs are compared in; built once per version of the evaluation split and sets, read by every decontamination

with evaluation as (
    select * from {{ ref('marts.eval_pairs') }}
),

evaluation_sets as (
    select * from {{ ref('marts.evaluation_sets') }}
)

select distinct text, source, kind
from (
    select kalm_norm(query) as text, source, 'query' as kind from evaluation
    union all
    select kalm_norm(positive), source, 'relevant text' from evaluation
    union all
    select kalm_norm(text), source, kind from evaluation_sets
)
where text <> ''
order by text, source, kind
