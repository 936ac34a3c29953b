"""Training data the audio plugin can make offline."""
