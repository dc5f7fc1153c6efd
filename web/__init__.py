"""The dashboard: static files served by the daemon, shipped in the package as orchestrator.web."""
