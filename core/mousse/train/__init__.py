"""mousse.train: one training run of a language model with an optimizer of `mousse.optim`.

The run's settings (`config`, `presets`), the model (`model`), the token data (`data`), the loop
(`trainer`), its checkpoints (`checkpoint`), the events it reports (`events`) and its files
(`fileio`, `tomlio`). `world.World` is the single-process view of the job the loop runs in;
`mousse.distributed` supplies the multi-rank one.
"""
