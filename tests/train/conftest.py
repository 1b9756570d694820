"""tests/train: one training run (mousse.train): settings, the GPT and user models, data, the
loop, checkpoints, events and dashboards, costs, old names. Most tests drive a run through the
`cli` fixture or the `mousse_proc` subprocess of the root conftest (shared with tests/cli and
tests/experiments); fixtures used by one file stay in it (`reference` in test_checkpoint.py and
test_user_model.py, `bad_models`)."""
