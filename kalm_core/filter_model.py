"""The filter model: an embedding model ranks the corpus, never a plain language model (KaLM §3.2 (2)-(3)).

Ranking consistency and hard-negative mining rank a source's corpus for every query. An untrained language model's
pooled states are not a retrieval space: such a filter drops good pairs and keeps bad ones, and its "hard" negatives
are arbitrary (FlagEmbedding's `hn_mine` takes an embedder such as bge for the same reason). So `filter.model` must be
a sentence-transformers model, a local directory or a hub repo whose `modules.json` names a Pooling module, whose
pooling and normalisation the filter then uses; or `embedder:latest`, the embedder an earlier run promoted
(`training.embedder`), which is such a directory. A plain LM filters only when the user says so (`--allow-lm-filter`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from kalm_core.config import ModelConfig, Profile, resolve_model_path

EMBEDDER_LATEST = "embedder:latest"
ALLOW_LM_ENV = "KALM_ALLOW_LM_FILTER"  # set by `kalm run/ui --allow-lm-filter`, read by the filtered steps
ST_POOLING = {"mean_tokens": "mean", "cls_token": "cls", "lasttoken": "last_token"}  # sentence-transformers' -> ours


class FilterModelError(ValueError):
    """A filter model that is not an embedder, or that cannot be found or checked."""


@dataclass(frozen=True)
class FilterModel:
    name: str  # as the profile names it
    path: str  # a local directory or a hub id
    config: ModelConfig  # the profile's model settings with this model's own pooling and normalisation
    is_embedder: bool


def allow_lm_filter() -> bool:
    return os.environ.get(ALLOW_LM_ENV, "") not in ("", "0")


def latest_embedder(lake=None) -> str | None:
    """The model path of the embedder the last successful run promoted, or None (no lake, or nothing promoted)."""
    from kalm_core import warehouse as wh
    from kalm_core.identifiers import table

    if not wh.exists_lake(wh.lake_spec(lake)):
        return None
    with wh.connect(lake, read_only=True) as con:
        if not wh.exists(con, "training", "embedder"):
            return None
        row = con.execute(f"select model_path from {table('training', 'embedder')} limit 1").fetchone()
    return row[0] if row else None


def named_model(profile: Profile) -> str:
    """What the profile asks to filter with: `filter.model`, or the base model when it names none."""
    return profile.filter.model or profile.model.base_model


def model_path(profile: Profile, lake=None) -> str:
    """The named filter model as a local path or hub id; `embedder:latest` looked up in the lake."""
    name = named_model(profile)
    if name != EMBEDDER_LATEST:
        return resolve_model_path(name)
    path = latest_embedder(lake)
    if path is None:
        raise FilterModelError(f"filter.model is {EMBEDDER_LATEST!r} but no run has promoted an embedder yet "
                               "(training.embedder is empty): run once with an embedding model as filter.model")
    if not Path(path).is_dir():
        raise FilterModelError(f"filter.model {EMBEDDER_LATEST!r} is {path}, which no longer exists")
    return path


def identity(profile: Profile, lake=None) -> str:
    """What the filtered layer's version covers: the model's weights for a local directory (retrained in place or
    newly promoted, the filtered tables go stale), the id for a hub model. Never raises and never downloads."""
    from kalm_core.embedding_cache import model_id

    try:
        path = model_path(profile, lake)
    except (FilterModelError, OSError, RuntimeError) as e:  # reported when filtering starts; the version just says so
        return f"unresolved: {e}"
    return model_id(path)


def _st_file(path: str, name: str) -> Path | None:
    """`name` inside a local model directory or a hub repo; None when the model has no such file."""
    if Path(path).is_dir() or os.path.isabs(path) or path.startswith("."):
        f = Path(path) / name
        if not Path(path).is_dir():
            raise FilterModelError(f"filter model {path} does not exist")
        return f if f.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(path, name))
    except LocalEntryNotFoundError as e:  # offline and not cached (a subclass of the next: it comes first)
        raise FilterModelError(f"cannot check whether filter model {path!r} is an embedder: the hub is not reachable "
                               f"and {name} is not cached ({e}). Download the model to a local directory and name "
                               "that as filter.model") from None
    except EntryNotFoundError:  # the repo has no such file
        return None
    except Exception as e:  # offline, unknown repo, no access: cannot tell what the model is
        raise FilterModelError(f"cannot check whether filter model {path!r} is an embedder: {type(e).__name__}: "
                               f"{e}. Download it to a local directory and name that as filter.model") from None


def st_pooling(path: str) -> tuple[str, bool] | None:
    """(pooling, normalize) from a sentence-transformers model's Pooling and Normalize modules; None when the model
    has no Pooling module (a plain transformers checkpoint: a language model, not an embedder)."""
    modules_file = _st_file(path, "modules.json")
    if modules_file is None:
        return None
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    pooling = [m for m in modules if m.get("type", "").endswith("Pooling")]
    if not pooling:
        return None
    config_file = _st_file(path, f"{pooling[0]['path']}/config.json")
    settings = json.loads(config_file.read_text(encoding="utf-8")) if config_file else {}
    modes = settings.get("pooling_mode")  # sentence-transformers 5: a mode or a list; before: one bool per mode
    if modes is None:
        modes = [key.removeprefix("pooling_mode_") for key, on in settings.items()
                 if key.startswith("pooling_mode_") and on is True]
    modes = [ST_POOLING.get(m, m) for m in ([modes] if isinstance(modes, str) else modes)]
    if len(modes) != 1 or modes[0] not in ("mean", "cls", "last_token"):
        raise FilterModelError(f"filter model {path}: pooling {modes or '(none configured)'} is not one of mean, "
                               "cls or last-token alone")
    return modes[0], any(m.get("type", "").endswith("Normalize") for m in modules)


def resolve(profile: Profile, allow_lm: bool | None = None, lake=None) -> FilterModel:
    """The filter model the profile names, checked: an embedder, or a language model the user allowed.

    Raises FilterModelError with the reason, before any step runs (the CLI calls this first)."""
    allow_lm = allow_lm_filter() if allow_lm is None else allow_lm
    name = named_model(profile)
    path = model_path(profile, lake)
    found = st_pooling(path)
    if found is None:
        if not allow_lm:
            which = "filter.model" if profile.filter.model else "the base model (filter.model is not set)"
            raise FilterModelError(
                f"{which} {name!r} is not an embedding model (no sentence-transformers Pooling module in "
                f"modules.json): a language model's pooled states do not rank a corpus, so ranking-consistency "
                f"filtering and hard-negative mining would be arbitrary. Set filter.model to an embedder (a "
                f"sentence-transformers directory, a hub id, or {EMBEDDER_LATEST!r}), or pass --allow-lm-filter")
        return FilterModel(name, path, profile.model, is_embedder=False)
    pooling, normalize = found
    return FilterModel(name, path, replace(profile.model, pooling=pooling, normalize=normalize), is_embedder=True)
