"""Audio pipelines: Dance Diffusion (waveforms) and Audio Diffusion (mel-spectrogram images)."""
