-- grain: one row per kept filtered pair left out of training because its query or positive is an evaluation text
--   after normalisation (marts.evaluation_texts) or holds half or more of one's word 13-grams
--   (marts.evaluation_ngrams), with the evaluation source it matches
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

evaluation_ngrams as (
    select * from {{ ref('marts.evaluation_ngrams') }}
),

-- containment: a training text of 13 words or more (25 characters at least: others are not split) that holds half
-- or more of an evaluation text's distinct 13-grams
training_words as (
    select source, row_number, positive_index, 'query' as field, kalm_word_hashes(query_norm) as words
    from consistent
    where length(query_norm) >= 25
    union all
    select source, row_number, positive_index, 'positive', kalm_word_hashes(positive_norm)
    from consistent
    where length(positive_norm) >= 25
),

training_ngrams as (
    select source, row_number, positive_index, field, unnest(kalm_ngrams(words)) as ngram
    from training_words
    where len(words) >= 13
),

contained as (
    select t.source, t.row_number, t.positive_index, t.field, e.source as eval_source, e.kind
    from training_ngrams t join evaluation_ngrams e on e.ngram = t.ngram
    group by t.source, t.row_number, t.positive_index, t.field, e.text, e.source, e.kind, e.n_grams
    having count(distinct t.ngram) * 2 >= e.n_grams
),

-- equi-joins (hash joins), where one join on `query or positive` would compare every pair with every text
matches as (
    select c.source, c.row_number, c.positive_index, c.pair_id, c.query, c.positive,
           'query' as field, 'is' as how, e.source as eval_source, e.kind
    from consistent c join evaluation_texts e on e.text = c.query_norm
    union all
    select c.source, c.row_number, c.positive_index, c.pair_id, c.query, c.positive,
           'positive', 'is', e.source, e.kind
    from consistent c join evaluation_texts e on e.text = c.positive_norm
    union all
    select c.source, c.row_number, c.positive_index, c.pair_id, c.query, c.positive,
           m.field, 'holds half the 13-grams of', m.eval_source, m.kind
    from consistent c join contained m using (source, row_number, positive_index)
)

select
    -- keys
    source,
    row_number,
    positive_index,
    pair_id,
    -- why
    -- the first match: equal before contained, a query before a positive, an evaluation query before a relevant
    -- text, then by source
    'contaminated: ' || arg_min(field || ' ' || how || ' a ' || kind || ' of ' || eval_source, priority) as reason,
    arg_min(eval_source, priority) as eval_source,
    -- text
    query,
    positive
from (select *, (how <> 'is')::int || (field <> 'query')::int || (kind <> 'query')::int || eval_source as priority
      from matches)
group by source, row_number, positive_index, pair_id, query, positive
order by source, row_number, positive_index
