"""tests/optim: the optimizer library (mousse.optim) on its own, the suite of the library people
put in their own loops. Nothing here imports mousse.train, mousse.distributed, mousse.experiments or
mousse_cli (tests/test_layers.py checks it, helpers from tests/support included), so
`pytest tests/optim` runs without the training stack. Fixtures used by one file stay in it
(`capture` in test_compiled.py, `interpreted` in test_kernels.py); the root conftest's autouse
fixture keeps torch on one thread. Triton runs its interpreter here: TRITON_INTERPRET=1 is set by
the root conftest before torch is imported (and again by test_kernels.py for its own process)."""
