"""tests/cli: the command line (mousse_cli): commands and exit codes, stdout vs stderr, plots,
flags from the knob table, and the promises of docs/reliability.md (test_reliability.py). The
`ablation` and `ablated` fixtures (one small ablation shared by a file's tests) live in the files
that use them; `cli` and `mousse_proc` come from the root conftest."""
