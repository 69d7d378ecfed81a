"""Files shipped inside arlm: DejaVu Sans Bold (its licence beside it), the synthetic set's word list."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from PIL import ImageFont


@lru_cache(maxsize=64)
def bold_font(px: int) -> ImageFont.FreeTypeFont:
    """The one font of the project: synthetic words are drawn in it, and picture labels too."""
    return ImageFont.truetype(str(resources.files(__name__).joinpath("DejaVuSans-Bold.ttf")), px)


def read_text(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text()
