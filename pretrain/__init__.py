"""matforge.pretrain: distributed pre-training on Ray Train (needs the ``[pretrain]`` extra)."""
