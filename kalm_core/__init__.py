"""kalm_core: the KaLM-Embedding recipe (arXiv 2501.01028) as plain, framework-free functions.

Each module is one step of the recipe; `assets/` wires them into Dagster and no module here imports Dagster.
"""

__version__ = "0.1.0"
