"""Grammar constraints: specs compiled per tokenizer into forkable per-hypothesis states (issue 3)."""
