"""The supervisor (trio): the pool of llama-server children, each child's life, and what guards them.

It knows nothing of the HTTP server in front of it (import-linter keeps it so);
``upstream`` is the supervisor's own HTTP client to its children.
"""
