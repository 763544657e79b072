"""Persona-based synthetic data (KaLM §3.2, technique (1)): brainstorm task instructions under a persona system
prompt, then write examples for 6 task types (the E5-mistral taxonomy), resumable and validated."""
