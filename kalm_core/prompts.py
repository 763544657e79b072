"""Each MTEB task's instruction, the way mteb applies KaLM's (KaLM §4.1; mteb's KaLM model definition).

KaLM gives queries `Instruct: {instruction} \\n Query: {query}` and documents nothing; symmetric tasks
(classification, clustering) get the instruction on every text; STS, pair classification and summarisation get
none. The instruction of a task is what mteb's KaLM wrapper picks: KaLM's own prompt for that task if it has one,
else the task's prompt in its mteb metadata, else mteb's default for the task's kind. `task_prompts` writes these as a
sentence-transformers prompts dict keyed the way mteb resolves prompts (`{task}-query`, `{task}`), so a saved model
carries them and `SentenceTransformer(path)` under `mteb.evaluate` applies them without our code.
"""

from __future__ import annotations

from kalm_core.config import ModelConfig

# The one instruction policy (training, curation, export, evaluation): these symmetric task types get none, as in
# mteb's KALMWrapper.encode; mteb's type names, then ours (the catalogue's task_type: sts, pair_classification, ...)
NO_INSTRUCTION_TYPES = ("STS", "PairClassification", "Summarization")
NO_INSTRUCTION_TASK_TYPES = ("sts", "pair_classification", "summarization")


def format_query(query: str, instruction: str | None, template: str = ModelConfig.query_template) -> str:
    """KaLM's query text; no instruction means the bare query (symmetric tasks, untrained bases)."""
    return template.format(instruction=instruction, query=query) if instruction else query


def query_instruction(task_type: str | None, instruction: str | None) -> str | None:
    """The instruction a query of this task type carries (None: the bare query)."""
    return None if task_type in NO_INSTRUCTION_TASK_TYPES else instruction


def instructed_query(query: str, task_type: str | None, instruction: str | None,
                     template: str = ModelConfig.query_template) -> str:
    """The query text the trainer, the filter and the miner all encode for this row."""
    return format_query(query, query_instruction(task_type, instruction), template)


def kalm_instruction(task, template: str = ModelConfig.query_template) -> str:
    """The formatted query prefix mteb's KaLM wrapper gives this task's queries ('' for none)."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_implementations.kalm_models import KaLM_task_prompts
    from mteb.types import PromptType

    if task.metadata.type in NO_INSTRUCTION_TYPES:
        return ""

    class _Prompts(AbsEncoder):  # mteb's own instruction lookup, without loading a model
        def __init__(self):
            self.prompts_dict = KaLM_task_prompts
            self.instruction_template = template.replace("{query}", "")

        def encode(self, *args, **kwargs):
            raise NotImplementedError

    return _Prompts().get_task_instruction(task.metadata, PromptType.query)


def task_prompts(tasks, template: str = ModelConfig.query_template) -> dict[str, str]:
    """{prompt name: prefix} for these mteb tasks, keyed so mteb's `get_prompt_name` finds them: `{task}-query` for
    retrieval and reranking (documents get nothing), `{task}` for the rest (every text gets it; '' = no prompt)."""
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    prompts = {}
    for task in tasks:
        name = task.metadata.name
        prompts[f"{name}-query" if isinstance(task, AbsTaskRetrieval) else name] = kalm_instruction(task, template)
    return prompts


def eval_task_prompts(names: tuple[str, ...], template: str = ModelConfig.query_template) -> dict[str, str]:
    """`task_prompts` for EvalConfig.mteb_tasks (task or benchmark names; metadata only, no data is loaded)."""
    if not names:
        return {}  # without importing mteb (~2.5 s)
    import mteb

    from kalm_core.evaluation import resolve_task_names

    return task_prompts(mteb.get_tasks(tasks=resolve_task_names(names)), template)
