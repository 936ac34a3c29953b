"""The 1-D models of the sequence plugin."""
