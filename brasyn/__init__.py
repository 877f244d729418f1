"""brasyn: synthesis of a missing brain MRI contrast with a conditional 3-D wavelet diffusion model."""

__version__ = "0.1.0"
