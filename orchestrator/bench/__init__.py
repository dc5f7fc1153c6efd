"""Benchmarks: the proxy's own cost against the direct path, cold starts and swaps, and a throughput sweep.

Each tool is an HTTP client of a daemon like any other: it starts one (as a
separate process, so that the daemon's CPU and memory are its own) or attaches
to one by URL.
"""
