"""PANNs tagging service: an HTTP-free tagging core (``service.core``) behind several doors.

Imports neither torch nor ``training``: a model bundle (see ``service.core.card``) is the only
contract with the training side. ``from service import Tagger`` (async) or ``SyncTagger``
gives the Python API without starting a server.
"""

from service.core.inputs import AudioInput, PcmFormat
from service.core.pipeline import WindowSpec
from service.core.sync import SyncTagger
from service.core.tagger import Tagger
from service.core.tasks import DetectOptions, TagOptions

__all__ = [
    "AudioInput",
    "DetectOptions",
    "PcmFormat",
    "SyncTagger",
    "TagOptions",
    "Tagger",
    "WindowSpec",
]
