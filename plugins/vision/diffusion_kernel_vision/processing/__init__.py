"""Vision processing."""
