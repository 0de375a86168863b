"""Model architectures, one per file, and the wrapper that owns input normalization."""
