-- grain: one row per kept filtered pair left out of training because its query or positive is an evaluation text
--   after normalisation (marts.evaluation_texts), with the evaluation source it matches
-- key: (source, row_number, positive_index)
-- empty: when no training pair touches the evaluation split
-- invariants: every kept filtered pair is in training_pairs, duplicate_pairs or here

with filtered_pairs as (
    select * from {{ ref('filtered.*') }}
),

consistent as (
    select *, kalm_norm(query) as query_norm, kalm_norm(positive) as positive_norm
    from filtered_pairs
    where kept
),

evaluation_texts as (
    select * from {{ ref('marts.evaluation_texts') }}
),

-- two equi-joins (hash joins), where one join on `query or positive` would compare every pair with every text
matches as (
    select c.source, c.row_number, c.positive_index, c.pair_id, c.query, c.positive,
           'query' as field, e.source as eval_source, e.kind
    from consistent c join evaluation_texts e on e.text = c.query_norm
    union all
    select c.source, c.row_number, c.positive_index, c.pair_id, c.query, c.positive,
           'positive', e.source, e.kind
    from consistent c join evaluation_texts e on e.text = c.positive_norm
)

select
    -- keys
    source,
    row_number,
    positive_index,
    pair_id,
    -- why
    -- the first match: a query before a positive, an evaluation query before a relevant text, then by source
    'contaminated: ' || arg_min(field || ' is a ' || kind || ' of ' || eval_source, priority) as reason,
    arg_min(eval_source, priority) as eval_source,
    -- text
    query,
    positive
from (select *, (field <> 'query')::int || (kind <> 'query')::int || eval_source as priority from matches)
group by source, row_number, positive_index, pair_id, query, positive
order by source, row_number, positive_index
