"""mousse.experiments: many runs compared. `ablation` plans runs from sweeps (`inputs` checks what
it is given, `spec` reads spec files), `tuning` tunes each variant first, `sweep` keeps an
ablation directory and `runner` trains its runs; `records` reads back what each run left,
`results` summarizes the records against the baseline with `stats`, and `table_rows` renders the
summary. `timing` times the variants' steps side by side; `bench` (with `kernelbench` and
`stopwatch`) times the optimizers side by side."""
