-- grain: one row per filtered source
-- key: source
-- incremental: source (each filtered table holds one source: a changed one recomputes its own row)
-- invariants: negatives = given + mined in window + filled at random; margin_dropped <= window_candidates

with filtered_pairs as (
    select * from {{ ref('filtered.*') }}
),

kept_pairs as (
    select * from filtered_pairs where kept
),

per_source as (
    select
        source,
        count(*) as kept_pairs,
        cast(sum(len(negatives)) as bigint) as negatives,
        cast(sum(n_given_negatives) as bigint) as given,
        cast(sum(n_mined_negatives) as bigint) as mined_in_window,
        cast(sum(n_filled_negatives) as bigint) as filled_at_random,
        count(*) filter (where n_filled_negatives > 0) as rows_with_fill,
        -- the positive-aware margin (NV-Retriever): window candidates it kept out as likely false negatives
        cast(sum(n_window_candidates) as bigint) as window_candidates,
        cast(sum(n_margin_dropped) as bigint) as margin_dropped
    from kept_pairs
    group by source
)

select
    source,
    kept_pairs,
    negatives,
    given,
    mined_in_window,
    filled_at_random,
    rows_with_fill,
    round(mined_in_window / nullif(negatives, 0), 4) as mined_fraction,
    window_candidates,
    margin_dropped,
    round(margin_dropped / nullif(window_candidates, 0), 4) as margin_dropped_fraction
from per_source
order by source
