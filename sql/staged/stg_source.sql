-- materialization: per_source
-- grain: one row per raw row of one source, with its disposition (kept, rejected or duplicate)
-- key: (source, row_number, positive_index)
-- invariants: rows in = kept + rejected + duplicate; pair_id unique among kept rows
-- input: raw_input (a view over raw.<source>)
-- macros: kalm_clean, kalm_pair_id (kalm_core/pairs.py); kalm_over_tokens counts in the profile's tokenizer
--   (kalm_core/token_length.py)
-- parameters: $task_type, $instruction, $language, $is_held_out, $max_query_tokens, $max_passage_tokens,
--   $folder_task_types (a file's sub-folder names its rows' task type)

with source as (
    select * from raw_input
),

normalised as (
    select
        -- lineage
        source,
        row_number,
        positive_index,
        record_id,
        content_hash,
        load_error,
        kept_out,
        raw_record,
        file,
        -- task: the row's own (FlagEmbedding's type and prompt), else its sub-folder's, else the catalogue's
        coalesce(kalm_task_type(row_task_type),
                 case when $folder_task_types then kalm_task_type(regexp_extract(file, '([^/]+)/[^/]*$', 1)) end,
                 $task_type) as task_type,
        coalesce(nullif(trim(row_instruction), ''), $instruction) as instruction,
        teacher_pos_score,
        teacher_neg_scores,
        -- text: width-folded (NFKC for full-width forms), zero-width characters removed, trimmed, NFC
        -- (kalm_clean: kalm_core/pairs.py)
        kalm_clean(query) as query,
        kalm_clean(positive) as positive,
        list_filter(list_transform(negatives, lambda n: kalm_clean(n)), lambda n: n <> '') as negatives
    from source
),

classified as (
    select
        *,
        case
            when load_error is not null then 'malformed record: ' || load_error
            when kept_out is not null then kept_out
            when query is null or query = '' then 'empty query'
            when positive is null or positive = '' then 'empty positive'
            when query = positive then 'query equals positive'
            when kalm_over_tokens(query, $max_query_tokens) then 'query over length limit'
            when kalm_over_tokens(positive, $max_passage_tokens) then 'positive over length limit'
            when list_contains(negatives, positive) then 'negative equals positive'
            when list_bool_or(list_transform(negatives, lambda n: kalm_over_tokens(n, $max_passage_tokens)))
                then 'negative over length limit'
        end as reject_reason
    from normalised
),

numbered as materialized (
    select
        *,
        -- a pure content hash: the same pair has the same id in every source (kalm_core/pairs.py)
        case when reject_reason is null then kalm_pair_id(query, positive) end as pair_id,
        -- (row_number, positive_index) as one orderable number
        row_number::hugeint * 4294967296 + positive_index as row_key
    from classified
),

-- each pair's first row: a hash aggregate over two narrow columns, where a window would sort every text
-- (2.4 s -> 0.5 s per 1M rows)
first_rows as (
    select pair_id, min(row_key) as first_row
    from numbered
    where pair_id is not null
    group by pair_id
),

dispositions as (
    select
        numbered.* exclude (reject_reason, row_key),
        case
            when reject_reason is not null then 'rejected'
            when first_row = row_key then 'kept'
            else 'duplicate'
        end as status,
        case
            when reject_reason is not null then reject_reason
            when first_row <> row_key then 'duplicate of an earlier row'
        end as reason
    from numbered
    left join first_rows using (pair_id)
)

select
    -- keys
    pair_id,
    source,
    row_number,
    positive_index,
    record_id,
    -- disposition
    status,
    reason,
    -- text
    query,
    positive,
    negatives,
    -- task
    cast(task_type as varchar) as task_type,
    cast(instruction as varchar) as instruction,
    cast($language as varchar) as language,
    cast($is_held_out as boolean) as is_held_out,
    -- a teacher's scores (knowledge distillation), where the source has them
    teacher_pos_score,
    teacher_neg_scores,
    -- lineage
    file,
    raw_record,
    content_hash
from dispositions
