"""Scoring as the challenge does: pairing predictions with the real images, image metrics, segmentation
scores."""
