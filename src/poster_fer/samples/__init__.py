"""Sample images shipped with the package, so the first command after install has a face to label.

``grace_hopper.jpg``: Rear Admiral Grace M. Hopper, official U.S. Navy portrait (1984), a work of the U.S.
federal government and therefore in the public domain; the 512 x 600 copy is the one matplotlib distributes
as sample data (``mpl-data/sample_data/grace_hopper.jpg``).
"""

from __future__ import annotations

from pathlib import Path

SAMPLES = ("grace_hopper.jpg",)


def sample_path(name: str = "grace_hopper.jpg") -> Path:
    """The path of a shipped sample image (``poster-fer predict $(python -c ...)`` works on any install)."""
    if name not in SAMPLES:
        raise KeyError(f"no sample image {name!r}; shipped: {list(SAMPLES)}")
    return Path(__file__).resolve().parent / name
