"""Offline speech from eSpeak NG (formant synthesis), driven through its C API with ``ctypes``.

The library and its voice data come from the ``espeakng-loader`` wheel (install
``diffusion-kernel-audio[train]``); nothing is read from the system. Synthesis is *not*
deterministic: the same text, voice, rate and pitch, said twice in a row, give a slightly
different waveform (measured: most samples differ, the length by up to 14 samples of 12,000;
seeding the C library's ``rand`` does not change that), so rendered data sets, and what is
trained on them, vary a little from run to run.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
from diffusion_kernel.errors import PipelineError

SAMPLE_RATE = 22050  # eSpeak NG's output rate
# espeak_AUDIO_OUTPUT, espeak_PARAMETER and espeak_POSITION_TYPE values of speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
RATE, VOLUME, PITCH, RANGE = 1, 2, 3, 4
POS_CHARACTER = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


class Espeak:
    """``Espeak().say("seven", voice="en-us+f3", rate=170, pitch=50)`` -> int16 samples at
    22,050 Hz. One instance per process (the C library keeps global state)."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as exc:
            raise PipelineError("speech synthesis needs the espeakng-loader wheel: pip install "
                                "'diffusion-kernel-audio[train]'") from exc
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept alive as long as the library uses it
        rate = self._lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                           espeakng_loader.get_data_path().encode(), 0)
        if rate != SAMPLE_RATE:
            raise PipelineError(f"eSpeak NG did not start (returned {rate}); reinstall "
                                f"espeakng-loader")
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def say(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50,
            pitch_range: int = 50) -> np.ndarray:
        """int16 samples of ``text`` spoken by ``voice`` (language[+variant]), ``rate`` in words
        per minute, ``pitch`` and ``pitch_range`` 0-100."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise PipelineError(f"eSpeak NG has no voice {voice!r}; use a language such as "
                                f"'en-us' with an optional variant ('en-us+f3')")
        for parameter, value in ((RATE, rate), (PITCH, pitch), (RANGE, pitch_range)):
            self._lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks = []
        data = text.encode()
        self._lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, 0, None, None)
        self._lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


@functools.cache
def espeak() -> Espeak:
    """The process's synthesizer."""
    return Espeak()
