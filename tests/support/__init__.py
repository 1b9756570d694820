"""Helpers the tests import by name (pyproject's `pythonpath = ["tests"]` puts this package on the
path for `pytest`, `pytest tests/optim` and a single file alike): `cli` (driving `mousse`),
`gloo` (spawned gloo ranks), `data` (token shards), `usermodel` (examples/llama.py settings),
`results` (synthetic run records), `mousse_ref` and `family_ref` (the optimizers' dense fp64
references). Fixtures live in conftest.py files instead."""
