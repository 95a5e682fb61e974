"""PANNs model zoo, official checkpoints and the training recipe (needs torch)."""
