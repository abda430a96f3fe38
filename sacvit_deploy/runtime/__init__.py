"""Runtime: the early-exit pipeline, image loading and batching, results, profiling."""
