"""Audio processors: mel-spectrogram images (``Mel``) and the spectral arithmetic under them."""
