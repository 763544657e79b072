-- grain: one row per filtered source
-- key: source
-- incremental: source (each filtered table holds one source: a changed one recomputes its own row)
-- invariants: pairs = kept + dropped; kept_fraction in [0, 1]

with filtered_pairs as (
    select * from {{ ref('filtered.*') }}
),

per_source as (
    select
        source,
        count(*) as pairs,
        count(*) filter (where kept) as kept,
        count(*) filter (where not kept) as dropped,
        median(pos_rank) as median_pos_rank,
        avg(pos_score) as mean_pos_score
    from filtered_pairs
    group by source
)

select
    source,
    pairs,
    kept,
    dropped,
    round(kept / pairs, 4) as kept_fraction,
    median_pos_rank,
    round(mean_pos_score, 4) as mean_pos_score
from per_source
order by source
