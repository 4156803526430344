"""The recipe and the resumable pipeline, the training loop, DDP, the run dir and the run report."""
