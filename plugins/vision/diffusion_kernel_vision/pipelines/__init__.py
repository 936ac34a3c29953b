"""Vision pipelines."""
