"""Builds small Flickr8k-layout directories with known defects, for tests."""

import io
import os
from typing import Dict

from PIL import Image

from tfx_captioning.components.flickr8k_example_gen import layout


def jpeg_bytes(colour=(200, 30, 30), size=(64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new('RGB', size, colour).save(out, format='JPEG')
    return out.getvalue()


def png_bytes(colour=(30, 30, 200), size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new('RGBA', size, colour + (255,)).save(out, format='PNG')
    return out.getvalue()


# Expected skip counts of `write_defective_layout`, one per injected defect.
EXPECTED_SKIPS: Dict[str, int] = {
    layout.REASON_MALFORMED_TOKEN_LINE: 3,
    # two repeated token lines (one only after whitespace collapse), one repeated split line
    layout.REASON_DUPLICATE_LINE: 3,
    layout.REASON_MISSING_IMAGE_FILE: 1,
    layout.REASON_UNREADABLE_IMAGE: 3,  # random bytes, truncated JPEG, empty file
    layout.REASON_OVERSIZED_IMAGE: 0,  # test_example_gen ingests a bomb on its own
    layout.REASON_NO_CAPTION: 1,
    layout.REASON_IN_NO_SPLIT: 1,
    layout.REASON_IN_SEVERAL_SPLITS: 1,
}

GOOD_CAPTIONS = {
    'good1.jpg': ['A red square on the left.', 'un café près de la fenêtre', 'a   dog\truns'],
    'good2.jpg': ['A blue circle.', 'Another caption'],
    'good3.png': ['A png picture.'],
    'good4.jpg': ['An eval picture.'],
    'good5.jpg': ['A test picture.'],
}


def write_defective_layout(root: str) -> None:
    """Writes a Flickr8k layout whose defects are counted in EXPECTED_SKIPS.

    Good images: train good1, good2, good3 (PNG); eval good4; test good5. The
    token file uses CRLF line endings, UTF-8 and extra whitespace.
    """
    images = os.path.join(root, layout.IMAGES_DIR)
    os.makedirs(images)
    files = {
        'good1.jpg': jpeg_bytes(),
        'good2.jpg': jpeg_bytes((0, 0, 255)),
        'good3.png': png_bytes(),
        'good4.jpg': jpeg_bytes((0, 255, 0)),
        'good5.jpg': jpeg_bytes((255, 255, 0)),
        'corrupt.jpg': b'this is not an image at all' * 10,
        'truncated.jpg': jpeg_bytes(size=(300, 200))[:300],
        'empty.jpg': b'',
        'orphan.jpg': jpeg_bytes(),
        'nocaption.jpg': jpeg_bytes(),
    }
    for name, data in files.items():
        with open(os.path.join(images, name), 'wb') as f:
            f.write(data)
    lines = []
    for image_id, captions in GOOD_CAPTIONS.items():
        lines += [f'{image_id}#{n}\t{c}' for n, c in enumerate(captions)]
    lines += [
        'good1.jpg#0\tA red square on the left.',  # duplicate line
        'good2.jpg#1   Another   caption  ',  # duplicate once whitespace is collapsed
        'this line has no tab and no number',  # malformed
        'missing_hash.jpg\tcaption without number',  # malformed
        'good2.jpg#2\t   ',  # malformed: empty caption
        'corrupt.jpg#0\tA corrupt image.',
        'truncated.jpg#0\tA truncated image.',
        'empty.jpg#0\tAn empty image.',
        'orphan.jpg#0\tAn image in no split.',
        'missing.jpg#0\tAn image whose file is missing.',
        '',  # blank lines are layout, not data
    ]
    with open(os.path.join(root, layout.TOKEN_FILE), 'wb') as f:
        f.write('\r\n'.join(lines).encode('utf-8'))
    splits = {
        layout.SPLIT_FILES['train']: [
            'good1.jpg',
            'good2.jpg',
            'good3.png',
            'corrupt.jpg',
            'truncated.jpg',
            'empty.jpg',
            'missing.jpg',
            'nocaption.jpg',
            'good1.jpg',
        ],
        layout.SPLIT_FILES['eval']: ['good4.jpg'],
        layout.SPLIT_FILES['test']: ['good5.jpg', 'good4.jpg'],
    }
    for name, ids in splits.items():
        with open(os.path.join(root, name), 'w', encoding='utf-8') as f:
            f.write('\n'.join(ids) + '\n')
