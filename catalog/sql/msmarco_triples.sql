-- MS MARCO passage training triples from its id files (https://microsoft.github.io/msmarco/): a headerless
-- collection.tsv (pid, passage), queries.train.tsv (qid, query) and qidpidtriples.train.full.2.tsv (qid, positive
-- pid, negative pid). One record per (query, positive): the negatives are that pair's triples' negatives.
-- Catalogue: kind: sql, sql: sql/msmarco_triples.sql, files: {collection: ..., queries: ..., triples: ...}
with collection as (
    select * from read_csv(getvariable('collection'), delim = '\t', header = false, quote = '', escape = '',
                           columns = {'pid': 'VARCHAR', 'passage': 'VARCHAR'})
),
queries as (
    select * from read_csv(getvariable('queries'), delim = '\t', header = false, quote = '', escape = '',
                           columns = {'qid': 'VARCHAR', 'query': 'VARCHAR'})
),
triples as (
    select *, row_number() over () as line
    from read_csv(getvariable('triples'), delim = '\t', header = false,
                  columns = {'qid': 'VARCHAR', 'pos_pid': 'VARCHAR', 'neg_pid': 'VARCHAR'})
)
select q.query,
       pos.passage as positive,
       list(neg.passage order by t.line) filter (neg.passage is not null) as negatives,
       t.qid || ':' || t.pos_pid as record_id
from triples t
left join queries q on q.qid = t.qid  -- a dangling id keeps its record: staging rejects its empty text
left join collection pos on pos.pid = t.pos_pid
left join collection neg on neg.pid = t.neg_pid
group by t.qid, t.pos_pid, q.query, pos.passage
order by min(t.line)
