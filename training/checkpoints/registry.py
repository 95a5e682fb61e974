"""The 22 official PANNs checkpoints (Zenodo record 3987831) and name lookups.

Sizes and SHA-256 digests are the published files' (``../shared/data/panns_checkpoints.tsv``);
they are written here so a download can be verified without any other input.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

ZENODO_RECORD = 3987831
DEFAULT_BASE_URL = f"https://zenodo.org/record/{ZENODO_RECORD}/files/{{name}}?download=1"
BASE_URL_ENV = "PANNS_CHECKPOINT_URL"


class CheckpointError(Exception):
    """A checkpoint cannot be found, downloaded, verified, read or loaded."""


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One published checkpoint file: its architecture, name, AudioSet mAP, size and digest."""

    arch: str
    file_name: str
    mAP: float  # the paper's spelling, part of the agreed interface
    bytes: int
    sha256: str

    @property
    def url(self) -> str:
        """The file's Zenodo download URL."""
        return checkpoint_url(self, DEFAULT_BASE_URL)

    @property
    def size_mb(self) -> float:
        return self.bytes / 1e6


def checkpoint_url(entry: OfficialCheckpoint, base_url: str | None = None) -> str:
    """The download URL of ``entry`` under ``base_url``.

    ``base_url`` defaults to ``$PANNS_CHECKPOINT_URL``, then Zenodo. A base containing
    ``{name}`` is a template (the quoted file name is substituted, ``=`` becomes ``%3D``);
    any other base is a directory URL the quoted file name is appended to.
    """
    base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    name = quote(entry.file_name, safe="")
    if "{name}" in base:
        return base.replace("{name}", name)
    return f"{base.rstrip('/')}/{name}"


_TABLE: tuple[tuple[str, str, int, str], ...] = (
    # (architecture, file name, bytes, sha256)
    (
        "Cnn6",
        "Cnn6_mAP=0.343.pth",
        23698321,
        "8a17541944f2623a2a0164e072ac2f915dcedca99968083cc44bfbc7eb682275",
    ),
    (
        "Cnn10",
        "Cnn10_mAP=0.380.pth",
        25237595,
        "5240bdc47444e331bbeb54fd741d2b3f933a4526e84b0c17bf3593df94b13962",
    ),
    (
        "Cnn14",
        "Cnn14_mAP=0.431.pth",
        327428481,
        "0dc499e40e9761ef5ea061ffc77697697f277f6a960894903df3ada000e34b31",
    ),
    (
        "Cnn14_16k",
        "Cnn14_16k_mAP=0.438.pth",
        358668570,
        "e2ee543a27919542c2ea03eabaa70b24dcd4e6c8e05621de6b67a94e4c5058e6",
    ),
    (
        "Cnn14_8k",
        "Cnn14_8k_mAP=0.416.pth",
        357847315,
        "ac5742c797cfa4be050c33aeab3865c6c345180334815aa356d7ccd9f39a8601",
    ),
    (
        "Cnn14_DecisionLevelMax",
        "Cnn14_DecisionLevelMax_mAP=0.385.pth",
        327428481,
        "dd3b4043a87d4ec13df8082c0fcfee3fb5084151808e47e060987a95eabdd142",
    ),
    (
        "Cnn14_DecisionLevelAtt",
        "Cnn14_DecisionLevelAtt_mAP=0.425.pth",
        331757477,
        "4db243a07d69f28049e084ff37f906559d062826a5db61b587bcda58b833fae1",
    ),
    (
        "Cnn14_emb512",
        "Cnn14_emb512_mAP=0.420.pth",
        311601537,
        "aa8200ca9f193fecabd10c3956625bca5d02584db0958b99fbb225ed776e1bc9",
    ),
    (
        "Cnn14_emb128",
        "Cnn14_emb128_mAP=0.412.pth",
        307644796,
        "9e6706606e84b526fe6ad76408b0b5b1fd9843fa467be6a9969eb9f94f44f9cd",
    ),
    (
        "Cnn14_emb32",
        "Cnn14_emb32_mAP=0.364.pth",
        306655610,
        "ea4b0e1b821a68fc83f9e61ec39526ce55a276cd12ce87f28d2f8c07ecf2cbf3",
    ),
    (
        "ResNet22",
        "ResNet22_mAP=0.430.pth",
        259135254,
        "9d6b382409628a24ff02c4c3b98f10d0fbb8053f85c84fb2c6d5d15a07c1300b",
    ),
    (
        "ResNet38",
        "ResNet38_mAP=0.434.pth",
        299615982,
        "39454db77d80e6e482fb1428537d1a65d3bb87d3aa70660fb4d13d5af90b2f97",
    ),
    (
        "ResNet54",
        "ResNet54_mAP=0.429.pth",
        421919312,
        "f45188d24c2c5d9ce582387b27430317b5cd6a52c44fdb9ca366ab1d1e00648c",
    ),
    (
        "MobileNetV1",
        "MobileNetV1_mAP=0.389.pth",
        23639473,
        "5f1d094310e439620b63d377e89e69bc663b782f1c242c0695ceb5db6db4271f",
    ),
    (
        "MobileNetV2",
        "MobileNetV2_mAP=0.383.pth",
        20834417,
        "22437af9eb5ed1854b5ad285b4a17d5fc566f1a3b23df40db5541f5705ca340f",
    ),
    (
        "LeeNet11",
        "LeeNet11_mAP=0.266.pth",
        3012373,
        "557d356d9b47d68913c5419af8cad046710cbf4bd679f9d69a4db442beb2b571",
    ),
    (
        "LeeNet24",
        "LeeNet24_mAP=0.336.pth",
        40082648,
        "ad566ca445707462cfa31c7a21bae1243ccee21042404c9cf930dace8d01df2d",
    ),
    (
        "DaiNet19",
        "DaiNet19_mAP=0.295.pth",
        17605195,
        "bd79fc32fe51df99161db9a67735738bb67698216ab1e7d1797786678e9c2d1d",
    ),
    (
        "Res1dNet31",
        "Res1dNet31_mAP=0.365.pth",
        322101335,
        "161f7709913f50518368053cdff348a27921ee11001032e6a115a22163fe5373",
    ),
    (
        "Res1dNet51",
        "Res1dNet51_mAP=0.355.pth",
        426511058,
        "6b25553a6d2bad2bf611568bee032c5ee631b67b4382bbf2dd27da579c2f0906",
    ),
    (
        "Wavegram_Cnn14",
        "Wavegram_Cnn14_mAP=0.389.pth",
        324062653,
        "7b6553a4f23c48a1b72b532aadfe0ae293c02e5eceb6f4dcddbbaf8906a8055d",
    ),
    (
        "Wavegram_Logmel_Cnn14",
        "Wavegram_Logmel_Cnn14_mAP=0.439.pth",
        328692198,
        "6c1c917d780967c40bbfd0f20027bd394a7da72453ca716745fe8657206200ae",
    ),
)

_MAP_RE = re.compile(r"_mAP=(\d\.\d+)\.pth$")


def _entry(arch: str, file_name: str, size: int, sha256: str) -> OfficialCheckpoint:
    match = _MAP_RE.search(file_name)
    assert match, file_name
    return OfficialCheckpoint(arch, file_name, float(match.group(1)), size, sha256)


OFFICIAL: dict[str, OfficialCheckpoint] = {row[0]: _entry(*row) for row in _TABLE}

# A copy suffix a browser or a user adds to a downloaded file: "x (1).pth", "x-1.pth", "x copy.pth"
_COPY_SUFFIX = re.compile(r"(\s*\(\d+\)|[ _-]copy|[ _-]\d+)?\.pth?", re.IGNORECASE)
_ARCH_SUFFIX = re.compile(r"(\s*\(\d+\))?\.pth?", re.IGNORECASE)


def find_official(name: str) -> OfficialCheckpoint | None:
    """The official entry for an architecture or file name (case-insensitive), else ``None``.

    File names may carry a path, and a copy suffix such as ``Cnn14_mAP=0.431 (1).pth``;
    a bare ``<arch>.pth`` also names that architecture's entry.
    """
    base = Path(name).name.lower()
    for entry in OFFICIAL.values():
        if base in (entry.arch.lower(), entry.file_name.lower()):
            return entry
    for entry in OFFICIAL.values():
        stem = entry.file_name.lower().removesuffix(".pth")
        if base.startswith(stem) and _COPY_SUFFIX.fullmatch(base[len(stem) :]):
            return entry
        stem = entry.arch.lower()
        if base.startswith(stem) and _ARCH_SUFFIX.fullmatch(base[len(stem) :]):
            return entry
    return None


def get_official(name: str) -> OfficialCheckpoint:
    """Like :func:`find_official`, but an unknown name raises a ``CheckpointError``."""
    entry = find_official(name)
    if entry is None:
        known = ", ".join(OFFICIAL)
        raise CheckpointError(
            f"no official checkpoint named {name!r}; give an architecture ({known}) "
            f"or one of their file names (e.g. {OFFICIAL['Cnn14'].file_name})"
        )
    return entry
