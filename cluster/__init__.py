"""matforge.cluster: submit pre-training jobs to a Ray cluster."""
