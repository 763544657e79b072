-- grain: one row per distinct (query, positive) pair from the held-out sources (the evaluation split)
-- key: pair_id
-- invariants: held-out sources only (it reads nothing else, so editing a training source never makes it stale);
--   pair_id unique; no pair_id in training_pairs (a blocking check there)

with staged_pairs as (
    select * from {{ ref('staged.*', 'held_out') }}
),

held_out_sources as (
    select * from staged_pairs where is_held_out
),

deduplicated as (
    select
        *,
        row_number() over (partition by pair_id order by source, row_number, positive_index) as copy_number
    from held_out_sources
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
    -- lineage
    row_number,
    positive_index,
    record_id,
    content_hash
from deduplicated
where copy_number = 1
order by source, row_number, positive_index
