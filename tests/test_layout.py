"""Unit tests of the Flickr8k layout parser: every bad-input rule, on real files."""

import os

import pytest

from tests import flickr8k_fixtures
from tfx_captioning.components.flickr8k_example_gen import layout


def test_parse_token_lines_keeps_all_captions_in_number_order():
    captions, skipped = layout.parse_token_lines(
        ['a.jpg#1\tsecond', 'a.jpg#0\tfirst', 'b.jpg#0\tonly', '', '   ']
    )
    assert captions == {'a.jpg': ['first', 'second'], 'b.jpg': ['only']}
    assert skipped == {}


@pytest.mark.parametrize(
    'line',
    ['no tab or number', 'a.jpg\tno number', 'a.jpg#x\tbad number', 'a.jpg#0\t   ', '#0\tno id'],
)
def test_malformed_token_lines_are_counted(line):
    captions, skipped = layout.parse_token_lines([line, 'ok.jpg#0\tfine'])
    assert captions == {'ok.jpg': ['fine']}
    assert skipped == {layout.REASON_MALFORMED_TOKEN_LINE: 1}


def test_whitespace_is_collapsed_and_duplicates_dropped():
    captions, skipped = layout.parse_token_lines(
        ['a.jpg#0\t  A   dog\truns ', 'a.jpg#1\tA dog runs', 'a.jpg#0\tA dog runs']
    )
    assert captions == {'a.jpg': ['A dog runs']}
    assert skipped == {layout.REASON_DUPLICATE_LINE: 2}


def test_read_lines_handles_crlf_bom_utf8_and_bad_bytes(tmp_path):
    path = tmp_path / 'tokens.txt'
    path.write_bytes('\ufeffa.jpg#0\tcafé\r\nb.jpg#0\tok\r\n'.encode() + b'c.jpg#0\t\xff\xfe\n')
    lines = layout.read_lines(str(path))
    captions, skipped = layout.parse_token_lines(lines)
    assert captions == {'a.jpg': ['café'], 'b.jpg': ['ok']}
    # The line with bytes that are not UTF-8 is counted, not fatal.
    assert skipped == {layout.REASON_MALFORMED_TOKEN_LINE: 1}


def test_parse_split_lines_drops_repeats_and_blanks():
    assert layout.parse_split_lines(['a.jpg', ' b.jpg ', '', 'a.jpg']) == (['a.jpg', 'b.jpg'], 1)


def test_plan_ingestion_counts_each_reason():
    plan = layout.plan_ingestion(
        captions={'a.jpg': ['x'], 'b.jpg': ['y'], 'orphan.jpg': ['z'], 'gone.jpg': ['w']},
        split_ids={'train': ['a.jpg', 'gone.jpg', 'nocap.jpg'], 'eval': ['b.jpg', 'a.jpg']},
        image_files=['a.jpg', 'b.jpg', 'orphan.jpg', 'nocap.jpg', 'unlisted.jpg'],
        images_dir='/imgs',
    )
    assert [r.image_id for r in plan.splits['train']] == ['a.jpg']
    assert [r.image_id for r in plan.splits['eval']] == ['b.jpg']
    assert plan.splits['train'][0] == layout.ImageRecord('a.jpg', '/imgs/a.jpg', ('x',))
    assert plan.skipped == {
        layout.REASON_IN_SEVERAL_SPLITS: 1,
        layout.REASON_MISSING_IMAGE_FILE: 1,
        layout.REASON_NO_CAPTION: 1,
        layout.REASON_IN_NO_SPLIT: 2,  # orphan.jpg (captioned) and unlisted.jpg (file only)
    }


def test_check_layout_names_everything_missing(tmp_path):
    (tmp_path / layout.TOKEN_FILE).write_text('')
    with pytest.raises(layout.Flickr8kLayoutError) as e:
        layout.check_layout(str(tmp_path))
    message = str(e.value)
    assert 'Flicker8k_Dataset/' in message
    for name in layout.SPLIT_FILES.values():
        assert name in message
    assert layout.TOKEN_FILE not in message.split('missing')[1].split('.')[0]


def test_check_layout_on_missing_directory(tmp_path):
    with pytest.raises(layout.Flickr8kLayoutError, match='does not exist'):
        layout.check_layout(str(tmp_path / 'nope'))


def test_load_plan_on_defective_layout(tmp_path):
    flickr8k_fixtures.write_defective_layout(str(tmp_path))
    plan = layout.load_plan(str(tmp_path))
    ids = {split: [r.image_id for r in records] for split, records in plan.splits.items()}
    # The unreadable images are still planned: only reading them tells.
    assert ids == {
        'train': [
            'good1.jpg',
            'good2.jpg',
            'good3.png',
            'corrupt.jpg',
            'truncated.jpg',
            'empty.jpg',
        ],
        'eval': ['good4.jpg'],
        'test': ['good5.jpg'],
    }
    expected = dict(flickr8k_fixtures.EXPECTED_SKIPS, **{layout.REASON_UNREADABLE_IMAGE: 0})
    assert plan.skipped == expected
    good1 = plan.splits['train'][0]
    assert good1.captions == (
        'A red square on the left.',
        'un café près de la fenêtre',
        'a dog runs',
    )
    assert good1.path == os.path.join(str(tmp_path), layout.IMAGES_DIR, 'good1.jpg')
