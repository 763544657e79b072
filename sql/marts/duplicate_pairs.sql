-- grain: one row per pair the filter kept that another copy trains in its place (the same pair after
--   normalisation: case, whitespace, end punctuation; kalm_pair_key, kalm_core/pairs.py), in one source or across two
-- empty: when no pair is found twice
-- invariants: every kept filtered pair is in training_pairs or here, once; duplicate_of is a pair_id in training_pairs

with filtered_pairs as (
    select * from {{ ref('filtered.*') }}
),

keyed as (
    select *, kalm_pair_key(query, positive) as pair_key
    from filtered_pairs
    where kept and pair_id not in (select pair_id from {{ ref('marts.contamination') }})
),

ranked as (
    select
        *,
        row_number() over copies as copy_number,
        first_value(pair_id) over copies as kept_pair_id,
        first_value(source) over copies as kept_source,
        first_value(row_number) over copies as kept_row_number
    from keyed
    window copies as (partition by pair_key order by source, row_number, positive_index)
)

select
    -- keys
    source,
    row_number,
    positive_index,
    pair_id,
    -- why
    'duplicate of ' || kept_source || ' row ' || kept_row_number as reason,
    kept_pair_id as duplicate_of,
    kept_source as duplicate_of_source,
    -- text
    query,
    positive
from ranked
where copy_number > 1
order by source, row_number, positive_index
