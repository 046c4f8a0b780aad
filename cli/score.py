"""`caption-pipeline score`: coco-caption metrics of a COCO results file against COCO references.

caption-pipeline score --references captions_val.json --captions results.json

prints one JSON object, {"BLEU-1": ..., "BLEU-2": ..., "BLEU-3": ..., "BLEU-4": ...,
"METEOR": ..., "ROUGE-L": ..., "CIDEr-D": ...}, and nothing else on stdout. Bad
input exits 2 with one `error: ...` line on stderr, before any scoring starts.
TensorFlow is not imported.
"""

import argparse
import json
import sys
from typing import Any, Dict, Hashable, List

from tfx_captioning.models import caption_metrics


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the `score` subcommand to an `add_subparsers()` result.

    Args:
        subparsers: the parent parser's `add_subparsers()` action.

    Returns:
        The `score` parser.
    """
    parser = subparsers.add_parser(
        'score',
        help='BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of COCO-format captions (coco-caption)',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        '--references',
        required=True,
        metavar='REFS.json',
        help='COCO annotations: {"images": [{"id"}...], '
        '"annotations": [{"image_id", "caption"}...]}',
    )
    parser.add_argument(
        '--captions',
        required=True,
        metavar='CAPS.json',
        help='COCO results: [{"image_id", "caption"}...], one caption per image',
    )
    return parser


def _read_json(path: str) -> Any:
    """The parsed file; OSError if it cannot be read, ValueError if it is not JSON."""
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return json.loads(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f'{path}: not valid JSON ({e})') from e


def _image_id(value: Any, where: str) -> Hashable:
    # bool is an int to Python, but never an image id.
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f'{where}: image ids are ints or strings, got {value!r:.40}')
    return value


def _field(item: Any, key: str, where: str) -> Any:
    if not isinstance(item, dict):
        raise ValueError(f'{where} is a {type(item).__name__}, not an object')
    if key not in item:
        raise ValueError(f'{where} has no "{key}"')
    return item[key]


def _caption(item: Any, where: str) -> str:
    caption = _field(item, 'caption', where)
    if not isinstance(caption, str):
        raise ValueError(f'{where}: "caption" is a {type(caption).__name__}, not a string')
    return caption


def load_references(path: str) -> Dict[Hashable, List[str]]:
    """Reads a COCO caption annotations file into {image id: [reference, ...]}.

    Args:
        path: JSON `{"images": [{"id": ...}, ...], "annotations": [{"image_id": ...,
            "caption": ...}, ...]}`; other keys and fields are ignored.

    Returns:
        Every image of "images", with its annotations' captions in file order
        (an image without annotations maps to []).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not JSON, or not in that format; the message names the entry.
    """
    data = _read_json(path)
    if not isinstance(data, dict) or not all(k in data for k in ('images', 'annotations')):
        raise ValueError(
            f'{path}: a COCO annotations file is an object with "images" and "annotations"'
        )
    for key in ('images', 'annotations'):
        if not isinstance(data[key], list):
            raise ValueError(f'{path}: "{key}" is a {type(data[key]).__name__}, not a list')
    references: Dict[Hashable, List[str]] = {}
    for n, image in enumerate(data['images']):
        where = f'{path}: images[{n}]'
        references.setdefault(_image_id(_field(image, 'id', where), where), [])
    for n, annotation in enumerate(data['annotations']):
        where = f'{path}: annotations[{n}]'
        image_id = _image_id(_field(annotation, 'image_id', where), where)
        if image_id not in references:
            raise ValueError(f'{where}: image_id {image_id!r} is not in "images"')
        references[image_id].append(_caption(annotation, where))
    return references


def load_captions(path: str) -> Dict[Hashable, str]:
    """Reads a COCO results file into {image id: caption}.

    Args:
        path: JSON `[{"image_id": ..., "caption": ...}, ...]`; other fields are ignored.

    Returns:
        The captions, in file order.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not JSON, not in that format, empty, or captions an image twice.
    """
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f'{path}: a COCO results file is a list of {{"image_id", "caption"}}')
    if not data:
        raise ValueError(f'{path}: no captions (the list is empty)')
    captions: Dict[Hashable, str] = {}
    first_entry: Dict[Hashable, int] = {}
    for n, result in enumerate(data):
        where = f'{path}: [{n}]'
        image_id = _image_id(_field(result, 'image_id', where), where)
        if image_id in captions:
            raise ValueError(
                f'{where}: image_id {image_id!r} already has a caption (entry '
                f'{first_entry[image_id]}); one caption per image'
            )
        captions[image_id] = _caption(result, where)
        first_entry[image_id] = n
    return captions


def _fail(message: str, code: int) -> int:
    print('error: ' + ' '.join(message.split()), file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Scores `args.captions` against `args.references` and prints the JSON object.

    Args:
        args: parsed flags with `references` and `captions` paths.

    Returns:
        0; 2 for bad input (before any Java starts, or at once after); 1 if a
        Java process of the toolkit failed.
    """
    try:
        references = load_references(args.references)
        captions = load_captions(args.captions)
    except OSError as e:
        return _fail(f'{e.filename}: {e.strerror}' if e.filename else str(e), 2)
    except ValueError as e:
        return _fail(str(e), 2)
    try:
        scores = caption_metrics.score_captions(references, captions)
    except ValueError as e:  # a captioned image without references
        return _fail(f'{e} (captions {args.captions}, references {args.references})', 2)
    except (OSError, RuntimeError) as e:
        return _fail(f'scoring failed: {e}', 1)
    print(json.dumps(scores))
    return 0
