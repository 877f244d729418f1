"""From cases to outputs: predictors and baselines, the per-case synthesizer, the batch runner, previews,
sharding and read-ahead."""
