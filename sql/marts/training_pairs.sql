-- grain: one row per distinct (query, positive) pair the ranking-consistency filter kept, training sources only
-- key: pair_id
-- invariants: no held-out source (they are never filtered); pair_id unique; a pair found in two sources is kept once

with filtered_pairs as (
    select * from {{ ref('filtered.*') }}
),

consistent as (
    select * from filtered_pairs where kept
),

deduplicated as (
    select
        *,
        row_number() over (partition by pair_id order by source, row_number, positive_index) as copy_number
    from consistent
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
