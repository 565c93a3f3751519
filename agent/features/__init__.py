"""The one log-mel front end, shared by the device and by training (``spec.py`` the
feature spec and presets, ``mel.py`` the filter bank, ``extract.py`` batch and streaming
extraction, ``windows.py`` the model inputs).

Training imports this module, so a model is trained on exactly the features the device
computes. Written with numpy/scipy only (no librosa on a Raspberry Pi), and checked
against librosa's ``melspectrogram`` in the tests.

STFT parameters of the presets (16 kHz audio):

==================  ======  ======  ======  =====  ===============  ============
preset              n_fft   hop     mels    power  window (frames)  window hop
==================  ======  ======  ======  =====  ===============  ============
dcase2020-ae        1024    512     128     2      5  (x128 = 640)  1
mobilenetv2         1024    512     128     2      64 (~2.0 s)      8 (~256 ms)
mobilenetv2-dual    1024    512     128 +   2      64 (~2.0 s)      8 (~256 ms)
aegan-ad            2048    512     128     2      128 (~4.1 s)     32
gmgan               1024    512     64      2      64 (~2.0 s)      32
oevae               1024    256     64      2      125 (2.0 s)      62 (~1 s)
spectral-knn        1024    512     128 +   2      32 (~1.0 s)      32 (~1 s)
==================  ======  ======  ======  =====  ===============  ============

+ the 513-bin log power spectrum of the same STFT per frame (``spectrum``).

A frame is 64 ms of audio (n_fft 1024) advanced by 32 ms (hop 512; oevae: 16 ms, hop 256).
"""

from __future__ import annotations

from harken.agent.features.extract import LogMelExtractor, StreamingLogMel, logmel, periodic_window
from harken.agent.features.mel import hz_to_mel, mel_filterbank, mel_to_hz
from harken.agent.features.spec import (FEATURE_SPEC_VERSION, PRESETS, FeatureSpec,
                                        FeatureSpecError, preset, shared_front_end)
from harken.agent.features.windows import n_windows, windows

__all__ = ["FEATURE_SPEC_VERSION", "PRESETS", "FeatureSpec", "FeatureSpecError", "preset",
           "shared_front_end",
           "hz_to_mel", "mel_to_hz", "mel_filterbank", "LogMelExtractor", "StreamingLogMel",
           "logmel", "periodic_window", "n_windows", "windows"]
