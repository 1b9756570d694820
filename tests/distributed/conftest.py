"""tests/distributed: one rank of a torchrun job (mousse.distributed): ownership plans, sharded checkpoints,
collectives on gloo ranks spawned on CPU (tests/support/gloo.py), and real torchrun jobs. The
`runs` fixture (one- and two-rank reference runs) lives in test_distributed.py, its only user."""
