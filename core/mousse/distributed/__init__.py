"""mousse.distributed: one rank of a torchrun job. `rank.Dist` (the trainer's `World` hooks as
collectives and sharded checkpoints), `ownership` (which rank computes which matrix) and
`process` (the rank's environment, errors and exit)."""

from .rank import Dist, setup, teardown

__all__ = ["Dist", "setup", "teardown"]
