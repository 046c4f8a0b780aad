"""A folder of good and bad images, and a cheap 30000x30000 PNG bomb, for the runtime tests.

Every runtime (SavedModel, local server, TFLite runner, ExampleGen, both
caption commands) must caption the good images and refuse each bad one with
the same reason (`models.image_files`).
"""

import functools
import os
from typing import Dict

from tfx_captioning.models import image_files
from tfx_captioning.serving.fixture_model import fixture_image_bytes, fixture_serving_images

BOMB_SIZE = 30_000
"""The bomb's width and height: 900 megapixels, 2.7 GB of RGB if it were decoded."""


@functools.lru_cache(maxsize=1)
def png_bomb() -> bytes:
    """A valid, fully decodable 1-bit PNG of BOMB_SIZE x BOMB_SIZE, about 110 KB (built in ~1 s)."""
    from tests import feature_extractor_fixtures

    return feature_extractor_fixtures.huge_png(BOMB_SIZE, BOMB_SIZE)


GOOD = {
    'a_red.jpg': 'a red picture',
    'b_blue.PNG': 'a blue picture',  # extensions count in any case
    'g_green.gif': 'a green picture',
}
"""Good files of `write_image_folder` and the fixture models' caption of each."""

BAD = {
    'c_truncated.jpg': image_files.NOT_DECODABLE,  # header intact, data cut: found by decoding
    'd_empty.jpg': image_files.EMPTY,
    'e_notes.png': image_files.UNSUPPORTED_FORMAT,  # a text file named .png
    'f_bomb.png': image_files.TOO_MANY_PIXELS,
}
"""Bad files of `write_image_folder` and the first words of the reason every runtime gives."""


def write_image_folder(root: str) -> str:
    """Writes GOOD and BAD files, plus what a directory listing must skip; returns `root`."""
    photo = fixture_serving_images()['photo.jpg']
    files: Dict[str, bytes] = {
        'a_red.jpg': fixture_image_bytes('JPEG', (220, 30, 30)),
        'b_blue.PNG': fixture_image_bytes('PNG', (30, 30, 220)),
        'g_green.gif': fixture_image_bytes('GIF', (30, 200, 30)),
        'c_truncated.jpg': photo[: len(photo) // 2],
        'd_empty.jpg': b'',
        'e_notes.png': b'shopping list: eggs, milk\n',
        'f_bomb.png': png_bomb(),
        'readme.txt': b'not an image extension: not listed',
        '.hidden.jpg': b'a hidden file: not listed',
    }
    os.makedirs(os.path.join(root, 'subdir'))
    files[os.path.join('subdir', 'nested.jpg')] = fixture_image_bytes('JPEG', (0, 0, 0))
    for name, data in files.items():
        with open(os.path.join(root, name), 'wb') as f:
            f.write(data)
    return root
