-- grain: one row per distinct (query, positive) pair the ranking-consistency filter kept, training sources only
-- key: pair_id
-- invariants: no held-out source (they are never filtered); no pair marts.contamination lists (a query or positive
--   that is an evaluation text after normalisation, or holds half of one's 13-grams); pair_id unique; a pair found
--   twice, in one source or two, is kept once after normalisation (case, whitespace, end punctuation:
--   kalm_pair_key, kalm_core/pairs.py); the other copies are in marts.duplicate_pairs

with filtered_pairs as (
    select * from {{ ref('filtered.*') }}
),

consistent as (
    select *, kalm_norm(query) as query_norm, kalm_norm(positive) as positive_norm
    from filtered_pairs
    where kept
),

-- decontamination: a pair whose query or positive is an evaluation query or relevant text after normalisation, or
-- holds half of one's word 13-grams (marts.contamination lists it with the evaluation source it matches)
decontaminated as (
    select * from consistent
    where pair_id not in (select pair_id from {{ ref('marts.contamination') }})
),

deduplicated as (
    select
        *,
        -- the first source by name, then the first row, keeps a pair (deterministic)
        row_number() over (partition by query_norm, positive_norm
                           order by source, row_number, positive_index) as copy_number
    from decontaminated
)

select
    -- keys
    pair_id,
    source,
    -- task
    task_type,
    instruction,
    language,
    -- text
    query,
    positive,
    negatives,
    -- curation
    pos_rank,
    pos_score,
    n_given_negatives,
    n_mined_negatives,
    n_filled_negatives,
    -- lineage
    row_number,
    positive_index,
    record_id,
    content_hash
from deduplicated
where copy_number = 1
order by source, row_number, positive_index
