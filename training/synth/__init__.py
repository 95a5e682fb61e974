"""A synthetic sound-event data set for smoke tests and demos, with no downloads.

Classes are real AudioSet labels (see :data:`CLASSES`; Speech joins through espeak-ng when it is
installed). ``python -m training.synth --out DIR --clips N`` writes multi-label clips in the
AudioSet segment format (``DIR/segments.csv`` + ``DIR/audio/<YTID>.wav``, ready for
``python -m training.data pack``); ``--layout folder`` writes single-label clips as
``DIR/<label>/<YTID>.wav`` for fine-tuning. Output is a function of the seed.
"""

from training.synth.build import (
    SynthClip,
    draw_classes,
    fake_ytid,
    mix_clip,
    synth_audioset,
    synth_folder,
)
from training.synth.generators import (
    CLASSES,
    SILENCE,
    SPEECH,
    SynthClass,
    available_classes,
    espeak_available,
    make_beep,
    make_mains_hum,
    make_pink_noise,
    make_silence,
    make_sine_wave,
    make_siren,
    make_speech,
    make_tick,
    make_white_noise,
)

__all__ = [
    "CLASSES",
    "SILENCE",
    "SPEECH",
    "SynthClass",
    "SynthClip",
    "available_classes",
    "draw_classes",
    "espeak_available",
    "fake_ytid",
    "make_beep",
    "make_mains_hum",
    "make_pink_noise",
    "make_silence",
    "make_sine_wave",
    "make_siren",
    "make_speech",
    "make_tick",
    "make_white_noise",
    "mix_clip",
    "synth_audioset",
    "synth_folder",
]
