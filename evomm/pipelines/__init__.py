"""Code that belongs to one pipeline config in `pipelines/` (held-out reports, ...)."""
