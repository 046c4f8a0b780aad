"""A known-truth check of what a caption model learnt, on the generated sample data.

Reference metrics (BLEU, CIDEr, ...) reward wording like the references'; on
the sample data we know what each image shows (`sample_data.ATTRIBUTES_FILE`,
written by the generator), so we can ask the plainer question: does the
caption name the right colour, shape, size, position and background? A
caption is right about an attribute when it names the true value and no other
value of that attribute ("a red or blue circle" is not right about colour).

Pure functions over plain data: no TensorFlow, no ML Metadata. Real Flickr8k
has no truth file, so `read_truth` returns None there and callers print nothing.
"""

import os
import re
from typing import Dict, Mapping, Optional, Sequence, Set, Tuple

from tfx_captioning.cli import sample_data
from tfx_captioning.models import features

Truth = Mapping[str, Mapping[str, str]]
"""image id (the file name, as in the Flickr8k token file) -> attribute -> true value."""

_SYNONYMS: Mapping[str, Tuple[str, ...]] = {
    'grey': ('gray',),
    'middle': ('centre', 'center'),
    'big': ('large',),
}
"""Other words a caption may use for a value; the generator's own word always counts."""


def _attribute_words() -> Dict[str, Dict[str, Tuple[str, ...]]]:
    """Each attribute's values and the words naming them, from the generator's constants."""
    return {
        attribute: {
            value: (value, *_SYNONYMS.get(value, ()))
            for value in sample_data.ATTRIBUTE_VALUES[attribute]
        }
        for attribute in sample_data.ATTRIBUTES
    }


ATTRIBUTE_WORDS: Mapping[str, Mapping[str, Tuple[str, ...]]] = _attribute_words()
"""attribute -> value -> the single words that name it, e.g. 'position' -> 'middle' ->
('middle', 'centre', 'center'): the captions say 'in the middle'."""

_WORD_TO_VALUE: Mapping[str, Tuple[str, str]] = {
    word: (attribute, value)
    for attribute, values in ATTRIBUTE_WORDS.items()
    for value, words in values.items()
    for word in words
}

_WORD = re.compile(r'[^\W_]+')


def words(caption: str) -> Tuple[str, ...]:
    """The caption's words, lowercased, punctuation stripped ('Left.' -> 'left')."""
    return tuple(_WORD.findall(caption.lower()))


def named_values(caption: str) -> Dict[str, Set[str]]:
    """The values of each attribute the caption names (an empty set when it names none)."""
    named: Dict[str, Set[str]] = {attribute: set() for attribute in ATTRIBUTE_WORDS}
    for word in words(caption):
        if word in _WORD_TO_VALUE:
            attribute, value = _WORD_TO_VALUE[word]
            named[attribute].add(value)
    return named


def read_truth(data_root: str) -> Optional[Dict[str, Dict[str, str]]]:
    """Each image's true attributes from the generator's truth file, or None without one.

    Args:
      data_root: a Flickr8k-layout directory.

    Returns:
      image id -> attribute -> value; None when `data_root` has no
      `sample_data.ATTRIBUTES_FILE` (real Flickr8k).

    Raises:
      ValueError: the file's header or a line does not match the generator's
        attributes and values, naming the line; a truth that cannot be read
        must not be scored as if it could.
    """
    path = os.path.join(data_root, sample_data.ATTRIBUTES_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        lines = f.read().splitlines()
    header = ('image', *ATTRIBUTE_WORDS)
    if not lines or tuple(lines[0].split('\t')) != header:
        raise ValueError(f'{path}: the header must be {chr(9).join(header)!r}.')
    truth = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split('\t')
        if len(fields) != len(header):
            raise ValueError(f'{path}, line {number}: expected {len(header)} fields: {line!r}.')
        row = dict(zip(ATTRIBUTE_WORDS, fields[1:]))
        for attribute, value in row.items():
            if value not in ATTRIBUTE_WORDS[attribute]:
                raise ValueError(
                    f'{path}, line {number}: {value!r} is not a {attribute} '
                    f'({", ".join(ATTRIBUTE_WORDS[attribute])}).'
                )
        truth[fields[0]] = row
    return truth


def attribute_accuracy(captions: Mapping[str, str], truth: Truth) -> Dict[str, Dict[str, float]]:
    """How often the captions name each attribute, and name it right.

    Args:
      captions: image id -> the model's caption.
      truth: image id -> attribute -> true value (`read_truth`).

    Returns:
      attribute -> {'correct': share of images whose caption names the true
      value and no other value of the attribute, 'named': share naming any
      value of it, 'images': how many images were scored}. Only images in
      both `captions` and `truth` are scored.

    Raises:
      ValueError: no image is in both, so there is nothing to score.
    """
    image_ids = sorted(captions.keys() & truth.keys())
    if not image_ids:
        raise ValueError(
            f'none of the {len(captions)} captioned images is in the truth file '
            f'({len(truth)} images): the data was regenerated after the evaluation?'
        )
    correct = {attribute: 0 for attribute in ATTRIBUTE_WORDS}
    named = {attribute: 0 for attribute in ATTRIBUTE_WORDS}
    for image_id in image_ids:
        for attribute, values in named_values(captions[image_id]).items():
            named[attribute] += bool(values)
            correct[attribute] += values == {truth[image_id][attribute]}
    n = len(image_ids)
    return {
        attribute: {'correct': correct[attribute] / n, 'named': named[attribute] / n, 'images': n}
        for attribute in ATTRIBUTE_WORDS
    }


def accuracy_by_decoding(
    captions: Mapping[str, Mapping[str, str]],
    truth: Truth,
    decodings: Sequence[str] = ('greedy', 'beam'),
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """`attribute_accuracy` for each decoding the captions hold.

    Args:
      captions: image id -> decoding -> caption, as the evaluator's
        captions.json holds one split.
      truth: image id -> attribute -> true value.
      decodings: the decodings to score, in order; one no image has is left out.

    Returns:
      decoding -> `attribute_accuracy` result.

    Raises:
      ValueError: no captioned image is in the truth.
    """
    result = {}
    for decoding in decodings:
        chosen = {i: c[decoding] for i, c in captions.items() if decoding in c}
        if chosen:
            result[decoding] = attribute_accuracy(chosen, truth)
    if not result:
        raise ValueError(f'no {" or ".join(decodings)} captions to score.')
    return result


def format_attribute_table(
    accuracy: Mapping[str, Mapping[str, Mapping[str, float]]], split: str = features.TEST_SPLIT
) -> str:
    """A plain-text table: per attribute, the share right and the share named, per decoding.

    Args:
      accuracy: decoding -> `attribute_accuracy` result (`accuracy_by_decoding`).
      split: the split the captions are of, for the title.
    """
    decodings = list(accuracy)
    images = {d: next(iter(accuracy[d].values()))['images'] for d in decodings}
    first = images[decodings[0]]
    labels = [d if images[d] == first else f'{d} ({images[d]})' for d in decodings]
    cell = 15
    lines = [
        f'Attributes named right in {first} {split} captions (right / named at all):',
        f'{"attribute":<11}' + ''.join(f' {label:>{cell}}' for label in labels),
    ]
    for attribute in accuracy[decodings[0]]:
        cells = [
            f'{accuracy[d][attribute]["correct"]:.1%} / {accuracy[d][attribute]["named"]:.1%}'
            for d in decodings
        ]
        lines.append(f'{attribute:<11}' + ''.join(f' {c:>{cell}}' for c in cells))
    return '\n'.join(lines)
