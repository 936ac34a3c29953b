"""diffusion-kernel audio plugin: Dance Diffusion (waveforms), Audio Diffusion (mel-spectrogram
images), the Mel processor, WAV files, and a shipped spoken-digits model."""
