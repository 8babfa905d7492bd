"""A randomized, Jepsen-style fault soak of the projector (`make soak`, `python -m tests.soak`)."""
