"""matforge.training: the training parts that are not distributed, shared by pre-training and
fine-tuning (never imports Ray): the optimiser and its schedules, checkpoint files, the TensorBoard
writer, the exponential moving average of the weights, early stopping."""
