"""The Flickr8k file layout: locating, parsing and checking it, as pure functions.

The dataset as released (``Flickr8k_Dataset.zip`` + ``Flickr8k_text.zip``) is::

    <root>/Flicker8k_Dataset/<image_id>.jpg      (sic: "Flicker")
    <root>/Flickr8k.token.txt                     <image_id>#<n>\\t<caption>
    <root>/Flickr_8k.trainImages.txt              one image id per line
    <root>/Flickr_8k.devImages.txt
    <root>/Flickr_8k.testImages.txt

Nothing here touches Beam or TensorFlow, so every rule about bad input is a
small function with its own unit tests. Bad input is never dropped silently:
each skipped line or image is counted under one of the ``REASON_*`` keys.
"""

import collections
import dataclasses
import os
import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from tfx_captioning.models import features

IMAGES_DIR = 'Flicker8k_Dataset'
TOKEN_FILE = 'Flickr8k.token.txt'
SPLIT_FILES: Mapping[str, str] = {
    features.TRAIN_SPLIT: 'Flickr_8k.trainImages.txt',
    features.EVAL_SPLIT: 'Flickr_8k.devImages.txt',
    features.TEST_SPLIT: 'Flickr_8k.testImages.txt',
}

# Reasons an input line or image is skipped. Every count is logged and recorded
# on the output Examples artifact.
REASON_MALFORMED_TOKEN_LINE = 'malformed_token_lines'
REASON_DUPLICATE_LINE = 'duplicate_lines'
REASON_MISSING_IMAGE_FILE = 'missing_image_files'
REASON_UNREADABLE_IMAGE = 'unreadable_images'
REASON_OVERSIZED_IMAGE = 'oversized_images'
"""Above `features.MAX_IMAGE_PIXELS`: no runtime would caption it, so it is not ingested."""
REASON_NO_CAPTION = 'ids_without_captions'
REASON_IN_NO_SPLIT = 'images_in_no_split'
REASON_IN_SEVERAL_SPLITS = 'ids_in_several_splits'
REASONS = (
    REASON_MALFORMED_TOKEN_LINE,
    REASON_DUPLICATE_LINE,
    REASON_MISSING_IMAGE_FILE,
    REASON_UNREADABLE_IMAGE,
    REASON_OVERSIZED_IMAGE,
    REASON_NO_CAPTION,
    REASON_IN_NO_SPLIT,
    REASON_IN_SEVERAL_SPLITS,
)

# <image_id>#<n><whitespace><caption>. The released file uses one tab; any run
# of whitespace is accepted so hand-edited files still parse.
_TOKEN_LINE = re.compile(r'^(?P<image_id>[^#\s]+)#(?P<number>\d+)\s+(?P<caption>\S.*)$')


class Flickr8kLayoutError(ValueError):
    """The directory does not hold the Flickr8k files."""


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image to ingest: its id, its file and all its reference captions."""

    image_id: str
    path: str
    captions: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class IngestionPlan:
    """What to ingest per split, and what was skipped before reading images."""

    splits: Mapping[str, Tuple[ImageRecord, ...]]
    skipped: Mapping[str, int]


def check_layout(root: str) -> None:
    """Fails at once, naming every missing piece, unless `root` is a Flickr8k layout.

    Raises:
      Flickr8kLayoutError: `root` is missing the image directory or a text file.
    """
    if not os.path.isdir(root):
        raise Flickr8kLayoutError(f'Flickr8k data directory {root!r} does not exist.')
    missing = []
    if not os.path.isdir(os.path.join(root, IMAGES_DIR)):
        missing.append(IMAGES_DIR + '/')
    for name in (TOKEN_FILE, *SPLIT_FILES.values()):
        if not os.path.isfile(os.path.join(root, name)):
            missing.append(name)
    if missing:
        raise Flickr8kLayoutError(
            f'{root!r} is not a Flickr8k directory: missing {", ".join(missing)}. '
            f'Expected {IMAGES_DIR}/<id>.jpg, {TOKEN_FILE} and the split files '
            f'{", ".join(SPLIT_FILES.values())} (unpack both Flickr8k zips into one '
            'directory, or run `caption-data download`).'
        )


def read_lines(path: str) -> List[str]:
    """Reads a text file as UTF-8 lines, whatever its line endings, without a BOM.

    Bytes that are not UTF-8 are replaced rather than raising, so one bad line
    is counted as malformed by the parser instead of failing the whole file.
    """
    with open(path, 'rb') as f:
        text = f.read().decode('utf-8-sig', errors='replace')
    return text.splitlines()


def normalize_whitespace(text: str) -> str:
    """Strips and collapses runs of whitespace to one space."""
    return ' '.join(text.split())


def parse_token_lines(
    lines: Iterable[str],
) -> Tuple[Dict[str, List[str]], Dict[str, int]]:
    """Parses ``<image_id>#<n>\\t<caption>`` lines.

    Returns:
      (captions, skipped): captions per image id, in caption-number order then
      file order; skipped counts malformed and duplicate lines. Blank lines are
      layout, not data, and are ignored.
    """
    numbered: Dict[str, List[Tuple[int, int, str]]] = collections.defaultdict(list)
    seen = set()
    skipped = collections.Counter()
    for position, line in enumerate(lines):
        if not line.strip():
            continue
        match = _TOKEN_LINE.match(line.strip())
        if match is None or '\ufffd' in line:
            skipped[REASON_MALFORMED_TOKEN_LINE] += 1
            continue
        image_id = match['image_id']
        caption = normalize_whitespace(match['caption'])
        if (image_id, caption) in seen:
            skipped[REASON_DUPLICATE_LINE] += 1
            continue
        seen.add((image_id, caption))
        numbered[image_id].append((int(match['number']), position, caption))
    captions = {
        image_id: [caption for _, _, caption in sorted(entries)]
        for image_id, entries in numbered.items()
    }
    return captions, dict(skipped)


def parse_split_lines(lines: Iterable[str]) -> Tuple[List[str], int]:
    """Parses a split file: one image id per line.

    Returns:
      (image_ids, duplicates): ids in file order without repeats, and how many
      repeated lines were dropped.
    """
    ids: List[str] = []
    seen = set()
    duplicates = 0
    for line in lines:
        image_id = line.strip()
        if not image_id:
            continue
        if image_id in seen:
            duplicates += 1
            continue
        seen.add(image_id)
        ids.append(image_id)
    return ids, duplicates


def plan_ingestion(
    captions: Mapping[str, Sequence[str]],
    split_ids: Mapping[str, Sequence[str]],
    image_files: Iterable[str],
    images_dir: str,
) -> IngestionPlan:
    """Decides which images go to which split, counting everything it skips.

    Args:
      captions: captions per image id (from `parse_token_lines`).
      split_ids: image ids per split name, in split order (train, eval, test).
      image_files: file names present in the image directory.
      images_dir: directory holding the images, joined to each id for its path.

    Returns:
      The records per split and the skip counts. An id listed in several splits
      stays in the first one only, so no image leaks from train into eval/test.
    """
    present = set(image_files)
    skipped = collections.Counter()
    assigned = set()
    splits = {}
    for split, ids in split_ids.items():
        records = []
        for image_id in ids:
            if image_id in assigned:
                skipped[REASON_IN_SEVERAL_SPLITS] += 1
                continue
            assigned.add(image_id)
            if image_id not in present:
                skipped[REASON_MISSING_IMAGE_FILE] += 1
            elif not captions.get(image_id):
                skipped[REASON_NO_CAPTION] += 1
            else:
                records.append(
                    ImageRecord(
                        image_id=image_id,
                        path=os.path.join(images_dir, image_id),
                        captions=tuple(captions[image_id]),
                    )
                )
        splits[split] = tuple(records)
    # Images that exist or are captioned but that no split file names.
    unassigned = (present | set(captions)) - assigned
    if unassigned:
        skipped[REASON_IN_NO_SPLIT] += len(unassigned)
    return IngestionPlan(splits=splits, skipped=dict(skipped))


def load_plan(root: str, split_files: Optional[Mapping[str, str]] = None) -> IngestionPlan:
    """Checks the layout under `root`, reads its text files and plans ingestion.

    Args:
      root: the directory holding the Flickr8k files.
      split_files: split name -> split file name; defaults to the official ones.

    Raises:
      Flickr8kLayoutError: `root` is not a Flickr8k layout.
    """
    check_layout(root)
    split_files = dict(split_files or SPLIT_FILES)
    captions, skipped = parse_token_lines(read_lines(os.path.join(root, TOKEN_FILE)))
    skipped = collections.Counter(skipped)
    split_ids = {}
    for split, name in split_files.items():
        ids, duplicates = parse_split_lines(read_lines(os.path.join(root, name)))
        split_ids[split] = ids
        skipped[REASON_DUPLICATE_LINE] += duplicates
    images_dir = os.path.join(root, IMAGES_DIR)
    image_files = [
        name for name in os.listdir(images_dir) if os.path.isfile(os.path.join(images_dir, name))
    ]
    plan = plan_ingestion(captions, split_ids, image_files, images_dir)
    skipped.update(plan.skipped)
    return IngestionPlan(splits=plan.splits, skipped=_with_all_reasons(skipped))


def _with_all_reasons(counts: Mapping[str, int]) -> Dict[str, int]:
    """Every reason with its count, zero included, so reports always list all."""
    return {reason: int(counts.get(reason, 0)) for reason in REASONS}
