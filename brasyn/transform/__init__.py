"""Model space and its exact inverse: grids and resampling, orientation, normalisation, intensity."""
