"""Sound-event generators for the synthetic set, one per AudioSet class.

Each ``make_*(sample_rate, seconds, rng) -> float32 waveform`` draws its own parameters from
``rng`` (frequency, sweep rate, repetition rate, ...) and returns ``round(sample_rate * seconds)``
samples with a peak level of about 0.5 and short fades, so the events carry no clicks of their
own (clicks are the Tick class). The parameter ranges keep the classes apart on a log-mel
spectrogram: steady low/mid tones (Sine wave), pulsed high tones (Beep), sweeping tones (Siren),
50/60 Hz harmonic stacks (Mains hum), sparse broadband transients (Tick), flat or 1/f noise.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.audio import load_audio

Generator = Callable[[int, float, np.random.Generator], np.ndarray]
PEAK = 0.5
FADE_SECONDS = 0.01


def _samples(sample_rate: int, seconds: float) -> int:
    if sample_rate <= 0 or seconds <= 0:
        raise ValueError(f"need a positive rate and duration, got {sample_rate} Hz, {seconds} s")
    return round(sample_rate * seconds)


def _finish(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Fade in/out and scale to the common peak level."""
    fade = min(int(FADE_SECONDS * sample_rate), len(wave) // 2)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    peak = float(np.max(np.abs(wave))) if len(wave) else 0.0
    return (wave * (PEAK / peak) if peak > 0 else wave).astype(np.float32)


def _tone(phase: np.ndarray, harmonics: float = 0.0) -> np.ndarray:
    return np.sin(phase) + harmonics * np.sin(3 * phase)


def make_sine_wave(sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A steady pure tone, 150-900 Hz (log-uniform)."""
    t = np.arange(_samples(sample_rate, seconds)) / sample_rate
    freq = np.exp(rng.uniform(np.log(150), np.log(900)))
    return _finish(np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)), sample_rate)


def make_beep(sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Repeated tone bursts, 1.5-4 kHz (above the sirens), 60-200 ms on, 120-500 ms off."""
    n = _samples(sample_rate, seconds)
    t = np.arange(n) / sample_rate
    freq = np.exp(rng.uniform(np.log(1500), np.log(4000)))
    on = rng.uniform(0.06, 0.2)
    period = on + rng.uniform(0.12, 0.5)
    gate = ((t + rng.uniform(0, period)) % period) < on
    ramp = max(1, int(0.003 * sample_rate))  # 3 ms edges: no broadband clicks
    envelope = np.convolve(gate.astype(np.float64), np.ones(ramp) / ramp, mode="same")
    return _finish(np.sin(2 * np.pi * freq * t) * envelope, sample_rate)


def make_siren(sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A tone sweeping around 500-1500 Hz by ±20-45 %, 0.25-3 sweeps/s (wail or yelp)."""
    n = _samples(sample_rate, seconds)
    t = np.arange(n) / sample_rate
    centre = rng.uniform(500, 1500)
    depth = rng.uniform(0.2, 0.45)
    rate = np.exp(rng.uniform(np.log(0.25), np.log(3.0)))
    cycle = (rate * t + rng.uniform(0, 1)) % 1.0
    shape = np.sin(2 * np.pi * cycle) if rng.random() < 0.5 else 2 * np.abs(2 * cycle - 1) - 1
    freq = centre * (1 + depth * shape)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    return _finish(_tone(phase, harmonics=rng.uniform(0.0, 0.3)), sample_rate)


def make_mains_hum(sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """50 or 60 Hz with 6-16 harmonics (the 2nd strongest, as from transformers)."""
    t = np.arange(_samples(sample_rate, seconds)) / sample_rate
    f0 = 50.0 if rng.random() < 0.5 else 60.0
    count = int(rng.integers(6, 17))
    wave = np.zeros_like(t)
    for k in range(1, count + 1):
        gain = (1.5 if k == 2 else 1.0) * rng.uniform(0.5, 1.0) / k
        wave += gain * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    return _finish(wave, sample_rate)


def make_tick(sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Clock-like clicks, 2-6 per second: damped 2-6 kHz resonances with a noise transient."""
    n = _samples(sample_rate, seconds)
    rate = rng.uniform(2.0, 6.0)
    click_len = int(0.015 * sample_rate)
    tc = np.arange(click_len) / sample_rate
    freq = rng.uniform(2000, 6000)
    decay = rng.uniform(0.001, 0.003)
    click = np.exp(-tc / decay) * (
        np.sin(2 * np.pi * freq * tc) + 0.5 * rng.standard_normal(click_len)
    )
    wave = np.zeros(n + click_len)
    onset = rng.uniform(0, 1 / rate)
    while onset * sample_rate < n:
        start = int(onset * sample_rate)
        wave[start : start + click_len] += click * rng.uniform(0.7, 1.0)
        onset += (1 / rate) * rng.uniform(0.97, 1.03)
    return _finish(wave[:n], sample_rate)


def make_white_noise(sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise."""
    return _finish(rng.standard_normal(_samples(sample_rate, seconds)), sample_rate)


def make_pink_noise(sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """1/f noise: white noise shaped by 1/sqrt(f) in the frequency domain (DC removed)."""
    n = _samples(sample_rate, seconds)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=1.0 / sample_rate)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0.0
    return _finish(np.fft.irfft(spectrum, n=n), sample_rate)


def make_silence(sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Digital silence (the clip with no event)."""
    return np.zeros(_samples(sample_rate, seconds), dtype=np.float32)


SPEECH_WORDS = (
    "hello",
    "world",
    "testing",
    "one",
    "two",
    "three",
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "please",
    "listen",
    "carefully",
    "synthetic",
    "voice",
    "reading",
    "numbers",
    "seven",
    "eight",
    "nine",
    "ten",
)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def make_speech(sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Random words spoken by espeak-ng (random rate and pitch); needs ``espeak-ng`` on PATH."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("make_speech needs the espeak-ng program on PATH")
    n = _samples(sample_rate, seconds)
    words = " ".join(rng.choice(SPEECH_WORDS, size=max(3, int(seconds * 3))))
    speed, pitch = int(rng.integers(130, 200)), int(rng.integers(20, 80))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run(
            [exe, "-w", str(out), "-s", str(speed), "-p", str(pitch), words],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wave = load_audio(out, sample_rate, n)  # mono, resampled, padded or cut to n
    return _finish(wave.astype(np.float64), sample_rate)


@dataclass(frozen=True)
class SynthClass:
    name: str  # AudioSet display name
    mid: str  # AudioSet machine id
    make: Generator


CLASSES: tuple[SynthClass, ...] = (
    SynthClass("Sine wave", "/m/01v_m0", make_sine_wave),
    SynthClass("Beep, bleep", "/m/02fs_r", make_beep),
    SynthClass("Siren", "/m/03kmc9", make_siren),
    SynthClass("Mains hum", "/m/06xkwv", make_mains_hum),
    SynthClass("Tick", "/m/07qjznt", make_tick),
    SynthClass("White noise", "/m/0chx_", make_white_noise),
    SynthClass("Pink noise", "/m/0cj0r", make_pink_noise),
    SynthClass("Silence", "/m/028v0c", make_silence),
)
SPEECH = SynthClass("Speech", "/m/09x0r", make_speech)
SILENCE = CLASSES[-1]


def available_classes(speech: bool | None = None) -> tuple[SynthClass, ...]:
    """The classes to generate; Speech joins when ``speech`` (None: when espeak-ng is there)."""
    if speech is None:
        speech = espeak_available()
    if speech and not espeak_available():
        raise RuntimeError("Speech was requested but espeak-ng is not on PATH")
    return (*CLASSES, SPEECH) if speech else CLASSES
