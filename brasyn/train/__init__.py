"""Training: the trainer, validation during training, the case cache, its loader and the draws."""
