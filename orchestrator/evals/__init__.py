"""Accuracy evals: MMLU, GSM8K and HumanEval through any OpenAI-compatible URL, and A/B prompt comparisons.

Results go to SQLite one question at a time, so a rerun of the same command
resumes where the last one stopped.
"""
