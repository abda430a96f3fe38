"""Runtime: loading and pre-processing images, batching them for the exported graphs."""
