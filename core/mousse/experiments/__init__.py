"""mousse.experiments: many runs compared. `ablation` plans runs from sweeps, `sweep` executes a
plan in an ablation directory, `results` turns run records into statistics and tables, `bench`
times the optimizers side by side."""
