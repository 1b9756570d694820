"""tests/experiments: many runs compared (mousse.experiments): ablation plans, tuning, results,
statistics and tables, timing passes, expectations, bench and process placement. Synthetic run
records come from tests/support/results.py; runs go through the root conftest's `cli`."""
