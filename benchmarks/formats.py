"""Upload formats for the front-end benchmark: generated clips encoded once, HTTP requests built
once (so the load generator only sends bytes).

Every format carries the same kind of content (tones, a chirp, modulation, noise; seeded), 10 s
long by default. MP3 and Ogg Vorbis are 44.1 kHz stereo, as most such files are, so they pay
the mix-down and the resampling that a 44.1 kHz stereo WAV pays, plus their codec.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from urllib.parse import urlencode

import numpy as np
import soundfile as sf

BOUNDARY = "panns-bench-7d1f0c"


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    rate: int  # 0: the model's rate (raw PCM is sent at the rate the model wants)
    channels: int
    container: str | None  # soundfile format; None: raw PCM (the octet-stream door)
    subtype: str | None = None

    def rate_for(self, model_rate: int) -> int:
        return self.rate or model_rate


FORMATS = {
    f.name: f
    for f in (
        Format("wav32k", "WAV 16-bit, 32 kHz mono", 32000, 1, "WAV", "PCM_16"),
        Format("wav44k_stereo", "WAV 16-bit, 44.1 kHz stereo", 44100, 2, "WAV", "PCM_16"),
        Format(
            "mp3",
            "MP3 (libsndfile/LAME defaults), 44.1 kHz stereo",
            44100,
            2,
            "MP3",
            "MPEG_LAYER_III",
        ),
        Format(
            "ogg", "Ogg Vorbis (libsndfile defaults), 44.1 kHz stereo", 44100, 2, "OGG", "VORBIS"
        ),
        Format(
            "pcm", "raw PCM int16 at the model's rate, mono (application/octet-stream)", 0, 1, None
        ),
    )
}


def make_clip(rate: int, channels: int, seconds: float, seed: int) -> np.ndarray:
    """A seeded test clip, (frames, channels) float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    out = np.empty((n, channels), np.float32)
    for ch in range(channels):
        f1, f2 = rng.uniform(100, 1500), rng.uniform(1500, 6000)
        sweep = 300 + 3000 * t / max(seconds, 1e-9)
        x = 0.3 * np.sin(2 * np.pi * f1 * t) + 0.15 * np.sin(2 * np.pi * f2 * t)
        x += 0.1 * np.sin(2 * np.pi * np.cumsum(sweep) / rate)
        x *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)
        x += 0.02 * rng.standard_normal(n)
        out[:, ch] = x
    return out


def audio_file(
    clip: np.ndarray, rate: int, container: str = "WAV", subtype: str | None = "PCM_16"
) -> bytes:
    """``clip`` as the bytes of an audio file (soundfile's ``container`` and ``subtype``;
    16-bit WAV by default)."""
    buf = io.BytesIO()
    sf.write(buf, clip, rate, format=container, subtype=subtype)
    return buf.getvalue()


def encode(fmt: Format, clip: np.ndarray, rate: int) -> bytes:
    """The upload's bytes: an audio file, or raw little-endian int16 samples."""
    if fmt.container is None:
        pcm = np.clip(np.round(clip * 32767), -32768, 32767).astype("<i2")
        return pcm.tobytes()
    return audio_file(clip, rate, fmt.container, fmt.subtype)


def payloads(fmt: Format, model_rate: int, seconds: float, count: int) -> list[bytes]:
    """``count`` different clips in this format."""
    rate = fmt.rate_for(model_rate)
    return [
        encode(fmt, make_clip(rate, fmt.channels, seconds, seed), rate) for seed in range(count)
    ]


def multipart_body(data: bytes, filename: str, boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body with ``data`` as its one file part, "file"."""
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode()


def http_request(
    fmt: Format,
    data: bytes,
    model_rate: int,
    path: str = "/v1/tag",
    query: dict[str, str] | None = None,
) -> bytes:
    """One complete HTTP/1.1 keep-alive POST (headers + body), ready for ``sendall``."""
    params = dict(query or {})
    if fmt.container is None:
        params.update(
            sample_rate=str(fmt.rate_for(model_rate)), channels=str(fmt.channels), dtype="int16"
        )
        body, ctype = data, "application/octet-stream"
    else:
        body = multipart_body(data, f"clip.{fmt.container.lower()}")
        ctype = f"multipart/form-data; boundary={BOUNDARY}"
    target = path + ("?" + urlencode(params) if params else "")
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nAccept: application/json\r\n\r\n"
    ).encode()
    return head + body
