"""llama-sidecar: a supervised pool of llama-server processes behind one OpenAI-compatible endpoint."""
