"""The acoustic task's open stand-in: Free Spoken Digit Dataset -> log-mel images.

The paper's T4 uses UbiSound (private). FSDD (`spoken_digit` in TFDS: 3,000
8 kHz recordings of the digits 0-9 by 6 speakers) is the open substitute: real
audio, but speech rather than environmental sound.

Preparation writes TFDS's own `spoken_digit` layout (same features, name and
version as the catalog builder) from local files, so `tfds.data_source(
'spoken_digit')` reads it. manual_dir may hold any of:
  * `free-spoken-digit-dataset-1.0.9.tar.gz`, the catalog's archive (checksummed);
  * `fsdd_recordings.tar.gz`, a tar with `recordings/<digit>_<speaker>_<n>.wav`;
  * a `recordings/` folder of those wav files.

The model sees a [32, 32, 1] log-mel spectrogram in [0, 1] (see `log_mel`).
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from scipy.io import wavfile
from tensorflow_datasets.datasets.spoken_digit import spoken_digit_dataset_builder as _catalog

SAMPLE_RATE = 8000
TEST_RECORDINGS = 5        # recordings 0..4 of each (digit, speaker) are the test split
CANONICAL_TAR = "free-spoken-digit-dataset-1.0.9.tar.gz"
LOCAL_TAR = "fsdd_recordings.tar.gz"
MANUAL_INSTRUCTIONS = f"""
Put one of these in manual_dir: {CANONICAL_TAR} (GitHub release v1.0.9),
{LOCAL_TAR} (a tar with recordings/*.wav), or a recordings/ folder of
<digit>_<speaker>_<n>.wav files.
"""


def available(manual_dir: str) -> bool:
  return any(os.path.exists(os.path.join(manual_dir, f))
             for f in (CANONICAL_TAR, LOCAL_TAR, "recordings"))


def _read_wav(data: bytes) -> np.ndarray:
  rate, x = wavfile.read(io.BytesIO(data))
  if rate != SAMPLE_RATE:
    raise ValueError(f"expected {SAMPLE_RATE} Hz audio, got {rate} Hz")
  if x.ndim > 1:
    x = x[:, 0]
  return x.astype(np.int64)


class SpokenDigitLocal(_catalog.Builder, skip_registration=True):
  """Writes the catalog `spoken_digit` dataset from local files."""

  name = "spoken_digit"
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS

  def _split_generators(self, dl_manager):
    manual = os.fspath(dl_manager.manual_dir)
    canonical = os.path.join(manual, CANONICAL_TAR)
    local = os.path.join(manual, LOCAL_TAR)
    if os.path.exists(canonical):
      source = ("tar", canonical)
    elif os.path.exists(local):
      source = ("tar", local)
    elif os.path.isdir(os.path.join(manual, "recordings")):
      source = ("dir", os.path.join(manual, "recordings"))
    else:
      raise FileNotFoundError(f"No FSDD recordings in {manual}." + MANUAL_INSTRUCTIONS)
    return {"train": self._generate_examples(source)}

  def _generate_examples(self, source):  # pytype: disable=signature-mismatch
    kind, path = source
    if kind == "tar":
      with tarfile.open(path) as tf_:
        for m in tf_:
          if m.isfile() and m.name.endswith(".wav"):
            yield from self._example(os.path.basename(m.name), tf_.extractfile(m).read())
    else:
      for fname in sorted(os.listdir(path)):
        if fname.endswith(".wav"):
          with open(os.path.join(path, fname), "rb") as f:
            yield from self._example(fname, f.read())

  def _example(self, fname, data):
    key = fname[:-4]  # e.g. 7_jackson_32
    yield key, {"audio": _read_wav(data), "label": int(key.split("_")[0]), "audio/filename": fname}


def parse_file_name(fname: str) -> tuple[int, str, int]:
  """`<digit>_<speaker>_<n>.wav` -> (digit, speaker, recording index n)."""
  parts = os.path.splitext(os.path.basename(fname))[0].split("_")
  if len(parts) < 3 or not parts[0].isdigit() or not parts[-1].isdigit():
    raise ValueError(f"FSDD file name {fname!r} is not <digit>_<speaker>_<n>.wav")
  return int(parts[0]), "_".join(parts[1:-1]), int(parts[-1])


def is_test_file(fname: str) -> bool:
  """FSDD's official split: recordings numbered 0-4 are the test set (10%)."""
  return parse_file_name(fname)[2] < TEST_RECORDINGS


def mel_filterbank(n_mels: int, n_fft: int, sr: int, fmin: float = 0.0, fmax=None) -> np.ndarray:
  """HTK-style triangular mel filters, [n_fft // 2 + 1, n_mels]."""
  fmax = fmax or sr / 2
  mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
  hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
  pts = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
  freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
  lo, ce, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
  w = np.maximum(0.0, np.minimum((freqs - lo) / (ce - lo), (hi - freqs) / (hi - ce)))
  return w.T.astype(np.float32)


def log_mel(audio: np.ndarray, size: int = 32, sr: int = SAMPLE_RATE, seconds: float = 1.0,
            n_fft: int = 256, top_db: float = 80.0) -> np.ndarray:
  """One clip -> [size, size] log-mel image in [0, 1] (mel bands x time frames).

  The clip is centred in (or cropped to) `seconds`; `size` frames of a Hann-window
  STFT span it and `size` mel bands cover 0..sr/2. Power is taken in dB relative
  to the clip's maximum, floored at -top_db, then mapped to [0, 1]:
  this is the acoustic task's normalisation, stated here once.
  """
  n = int(sr * seconds)
  x = np.asarray(audio, np.float32).reshape(-1) / 32768.0
  if len(x) >= n:
    s = (len(x) - n) // 2
    x = x[s:s + n]
  else:
    pad = n - len(x)
    x = np.pad(x, (pad // 2, pad - pad // 2))
  hop = n // size
  x = np.pad(x, (n_fft // 2, n_fft // 2))
  frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop][:size]  # [size, n_fft]
  spec = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=-1)) ** 2
  mel = spec @ mel_filterbank(size, n_fft, sr)  # [T, M]
  db = 10.0 * np.log10(np.maximum(mel, 1e-10))
  db = np.maximum(db - db.max(), -top_db)
  img = (db + top_db) / top_db  # [T, M] in [0, 1]
  return img.T[::-1].astype(np.float32)  # [M, T], low frequencies at the bottom
