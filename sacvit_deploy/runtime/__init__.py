"""Runtime: the early-exit pipeline, image loading, profiling."""
