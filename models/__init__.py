"""matforge.models: architectures, graph featurisation, the energy/forces/stress wrapper, heads and
the backbone file format, shared by pre-training and fine-tuning."""
