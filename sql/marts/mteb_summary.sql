-- grain: one row per (task_type, task, dim): each task's main score, and per task type the average over its tasks
--   (task_name '(average)'), base vs trained side by side
-- key: (task_type, task_name, dim)
-- invariants: scores are mteb's main_score of each task, averaged over its splits and subsets; gain = trained - base

with main_scores as (
    select role, task_type, task_name, dim, avg(score) as score
    from {{ ref('evaluation.mteb_results') }}
    where metric = 'main_score'
    group by all
),

per_task as (
    select
        task_type,
        task_name,
        dim,
        max(score) filter (where role = 'base') as base,
        max(score) filter (where role = 'trained') as trained
    from main_scores
    group by all
),

per_type as (
    select task_type, '(average)' as task_name, dim, avg(base) as base, avg(trained) as trained, count(*) as tasks
    from per_task
    group by all
),

rows as (
    select task_type, task_name, dim, 1 as tasks, base, trained from per_task
    union all
    select task_type, task_name, dim, tasks, base, trained from per_type
)

select task_type, task_name, dim, tasks, base, trained, trained - base as gain
from rows
order by task_type, task_name = '(average)', task_name, dim desc
