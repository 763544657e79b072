-- grain: one row per distinct (query, positive) pair from the training (not held-out) sources
-- key: pair_id
-- invariants: no held-out source; pair_id unique; a pair found in two sources is kept once (first source by name)

with staged_pairs as (
    select * from {{ ref('staged.*') }}
),

training_sources as (
    select * from staged_pairs where not is_held_out
),

deduplicated as (
    select
        *,
        row_number() over (partition by pair_id order by source, row_number, positive_index) as copy_number
    from training_sources
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
