"""The maths: Haar wavelets, the sub-band space, the denoiser, the diffusion schedule and the samplers.

Pure and device-agnostic: nothing here reads or writes a file or knows a case."""
