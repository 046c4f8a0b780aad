"""Attention heat maps in the report: the drawing, the model query and the HTML section.

The drawing is checked pixel by pixel on real JPEGs made with Pillow and
hand-made attention whose peak region is known, so a transposed grid, a
flipped axis or a lost aspect ratio shows as the hottest pixel in the wrong
place. The query and the section run a real (tiny) SavedModel whose
`caption_attention` signature follows the exported model's contract, and the
report end to end reads it from a real SQLite ML Metadata store laid out as a
run leaves it.
"""

import base64
import io
import json
import os
import re

import numpy as np
import pytest
from ml_metadata.proto import metadata_store_pb2
from PIL import Image

from tests import mlmd_fixtures
from tfx_captioning.cli import attention_maps, report
from tfx_captioning.components.caption_evaluator import spec as evaluator_spec
from tfx_captioning.components.flickr8k_example_gen import executor as example_gen_executor
from tfx_captioning.models import features
from tfx_captioning.pipeline import configs

GRID = features.REGION_GRID
MAX_LEN = 6
WORDS = ('a', 'red', 'circle')
WORD_PEAKS = (0, 9, 63)
"""The region each word of the fixture model looks at most: top-left, row 1 column 1,
bottom-right (for the first image; the noun's peak moves one region left per image)."""
END_PEAK = 7
"""`<end>` looks at the top-right region."""
GREY = 128


def _jpeg(width: int = 320, height: int = 240, value: int = GREY) -> bytes:
    out = io.BytesIO()
    Image.new('RGB', (width, height), (value, value, value)).save(out, format='JPEG')
    return out.getvalue()


def _peaked(regions, rows: int = MAX_LEN, peak: float = 0.9) -> np.ndarray:
    """Attention rows summing to 1, row i peaking at regions[i]; zero rows after them."""
    attention = np.zeros((rows, features.NUM_REGIONS), np.float32)
    for i, region in enumerate(regions):
        attention[i] = (1.0 - peak) / (features.NUM_REGIONS - 1)
        attention[i, region] = peak
    return attention


def _hottest(image: Image.Image):
    """(x, y) of the pixel the heat colour changed most from the grey image (red minus blue)."""
    pixels = np.asarray(image, dtype=np.int32)
    warmth = pixels[..., 0] - pixels[..., 2]
    y, x = np.unravel_index(np.argmax(warmth), warmth.shape)
    return int(x), int(y)


def _cell(x: int, y: int, size):
    """The grid cell (row, column) pixel (x, y) of an overlay of `size` lies in."""
    return y * GRID // size[1], x * GRID // size[0]


# --- word_maps ----------------------------------------------------------------------------


def test_word_maps_gives_each_word_its_row_as_a_row_major_grid():
    attention = _peaked([1, 8, 63, 5])
    maps = attention_maps.word_maps('a red circle', attention, 3)
    assert [word for word, _ in maps] == list(WORDS)
    assert all(grid.shape == (GRID, GRID) for _, grid in maps)
    # Region 1 is row 0, column 1; region 8 is row 1, column 0.
    assert np.unravel_index(np.argmax(maps[0][1]), (GRID, GRID)) == (0, 1)
    assert np.unravel_index(np.argmax(maps[1][1]), (GRID, GRID)) == (1, 0)
    assert np.unravel_index(np.argmax(maps[2][1]), (GRID, GRID)) == (7, 7)
    with_end = attention_maps.word_maps('a red circle', attention, 3, include_end=True)
    assert with_end[-1][0] == features.END_TOKEN
    assert np.unravel_index(np.argmax(with_end[-1][1]), (GRID, GRID)) == (0, 5)
    # A caption cut off at max_len words has no <end> row to show.
    full = attention_maps.word_maps(' '.join(['w'] * MAX_LEN), attention, MAX_LEN, True)
    assert [word for word, _ in full] == ['w'] * MAX_LEN


@pytest.mark.parametrize(
    'caption, attention, length, message',
    [
        ('a red circle', np.zeros((MAX_LEN, 63)), 3, r'\[max_len, 64\], got \[6, 63\]'),
        ('a red circle', np.zeros(features.NUM_REGIONS), 3, r'got \[64\]'),
        ('a red circle', np.zeros((2, MAX_LEN, 64)), 3, r'got \[2, 6, 64\]'),
        ('a red circle', np.zeros((MAX_LEN, 64)), 2, 'has 3 words but length is 2'),
        ('a b c d e f g', np.zeros((MAX_LEN, 64)), 7, 'length 7 exceeds the 6 attention rows'),
    ],
)
def test_word_maps_refuses_shapes_that_break_the_contract(caption, attention, length, message):
    with pytest.raises(ValueError, match=message):
        attention_maps.word_maps(caption, attention, length)


# --- overlay ------------------------------------------------------------------------------


def test_all_weight_on_region_zero_heats_the_top_left_only():
    weights = np.zeros((GRID, GRID), np.float32)
    weights[0, 0] = 1.0
    image = attention_maps.overlay(_jpeg(), weights, (160, 120))
    assert image.size == (160, 120) and image.mode == 'RGB'
    pixels = np.asarray(image, dtype=np.int32)
    # The hottest pixel is the corner: full weight, so the brightest heat colour
    # (yellow) at MAX_ALPHA over the grey.
    alpha = attention_maps.MAX_ALPHA
    expected = np.array([255, 255, 0]) * alpha + GREY * (1 - alpha)
    np.testing.assert_allclose(pixels[0, 0], expected, atol=3)
    assert _cell(*_hottest(image), (160, 120)) == (0, 0)
    # Far from region 0 the image shows unchanged (bilinear reaches one cell further, no more).
    np.testing.assert_allclose(pixels[60:, :], GREY, atol=3)
    np.testing.assert_allclose(pixels[:, 80:], GREY, atol=3)
    # Heat fades smoothly away from the corner rather than stopping at the cell's edge.
    warmth = pixels[0, :40, 0] - pixels[0, :40, 2]
    assert np.all(np.diff(warmth) <= 1) and warmth[0] > warmth[25] > warmth[35]


def test_the_grid_covers_the_whole_image_whatever_its_aspect_ratio():
    """A 2:1 image keeps its shape in the overlay and region 7 still lands top right."""
    weights = np.zeros((GRID, GRID), np.float32)
    weights[0, 7] = 0.5
    weights[7, 0] = 0.25  # half as much: normalised to the max, still visibly warm
    image = attention_maps.overlay(_jpeg(400, 200), weights, (160, 120))
    assert image.size == (160, 80)
    assert _cell(*_hottest(image), image.size) == (0, 7)
    pixels = np.asarray(image, dtype=np.int32)
    top_right, bottom_left = pixels[4, 155], pixels[76, 4]
    assert top_right[0] - top_right[2] > bottom_left[0] - bottom_left[2] > 20


def test_a_uniform_or_empty_map_leaves_no_spot_hotter_than_another():
    image = attention_maps.overlay(_jpeg(), np.full((GRID, GRID), 1 / 64), (80, 60))
    pixels = np.asarray(image, dtype=np.int32)
    assert np.ptp(pixels[..., 0]) <= 3 and np.ptp(pixels[..., 2]) <= 3
    blank = attention_maps.overlay(_jpeg(), np.zeros((GRID, GRID)), (80, 60))
    np.testing.assert_allclose(np.asarray(blank, dtype=np.int32), GREY, atol=3)


def test_overlay_refuses_weights_that_are_not_the_grid():
    with pytest.raises(ValueError, match=r'weights must be \[8, 8\], got \[4, 4\]'):
        attention_maps.overlay(_jpeg(), np.zeros((4, 4)))


# --- attention_strip ----------------------------------------------------------------------


def _tiles(strip: Image.Image, count: int, columns: int, tile=attention_maps.TILE):
    """The overlays of a strip, cut out at the cells `attention_strip` draws them in."""
    cell_w, cell_h = tile[0] + 8, tile[1] + attention_maps.LABEL_HEIGHT + 8
    return [
        strip.crop(
            (
                (i % columns) * cell_w + 4,
                (i // columns) * cell_h + 4,
                (i % columns) * cell_w + 4 + tile[0],
                (i // columns) * cell_h + 4 + tile[1],
            )
        )
        for i in range(count)
    ]


def test_the_strip_has_one_overlay_per_word_then_end_each_hot_where_its_word_looked():
    attention = _peaked([*WORD_PEAKS, END_PEAK])
    strip = attention_maps.attention_strip(_jpeg(), 'a red circle', attention, 3)
    cell_w = attention_maps.TILE[0] + 8
    cell_h = attention_maps.TILE[1] + attention_maps.LABEL_HEIGHT + 8
    assert strip.size == (4 * cell_w, cell_h)
    cells = [_cell(*_hottest(t), attention_maps.TILE) for t in _tiles(strip, 4, 6)]
    assert cells == [(0, 0), (1, 1), (7, 7), (0, 7)]
    # Each word is written under its overlay: dark pixels in every label band.
    labels = np.asarray(strip.convert('L'))[attention_maps.TILE[1] + 4 :, :]
    for i in range(4):
        assert labels[:, i * cell_w : (i + 1) * cell_w].min() < 100, i
    without_end = attention_maps.attention_strip(
        _jpeg(), 'a red circle', attention, 3, include_end=False
    )
    assert without_end.size == (3 * cell_w, cell_h)


def test_a_long_caption_wraps_onto_more_rows():
    words = [f'w{i}' for i in range(9)]
    attention = _peaked(list(range(10)), rows=12)
    strip = attention_maps.attention_strip(_jpeg(), ' '.join(words), attention, 9, columns=4)
    cell_w = attention_maps.TILE[0] + 8
    cell_h = attention_maps.TILE[1] + attention_maps.LABEL_HEIGHT + 8
    assert strip.size == (4 * cell_w, 3 * cell_h)  # 9 words and <end>: 4 + 4 + 2
    cells = [_cell(*_hottest(t), attention_maps.TILE) for t in _tiles(strip, 10, 4)]
    assert cells == [(0, region) for region in range(8)] + [(1, 0), (1, 1)]
    with pytest.raises(ValueError, match='columns must be at least 1'):
        attention_maps.attention_strip(_jpeg(), 'a', attention, 1, columns=0)


# --- A tiny attention SavedModel and the report ------------------------------------------


def _save_fixture_model(export_dir: str, with_attention: bool = True) -> str:
    """A TEST FIXTURE SavedModel with the exported model's `caption_attention` contract.

    Every image is captioned 'a red circle'; word i of image 0 looks at
    WORD_PEAKS[i] and <end> at END_PEAK; the noun of image k looks one region
    left of image 0's, so the images' maps are told apart. All computed in TF
    from the batch, as the real signature would be.
    """
    import tensorflow as tf

    base = tf.constant(_peaked([*WORD_PEAKS, END_PEAK]))
    ids = [features.END_ID + 1 + i for i in range(len(WORDS))] + [features.END_ID]
    token_ids = tf.constant(ids + [features.PAD_ID] * (MAX_LEN - len(ids)), tf.int32)
    spec = tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES_INPUT)
    noun = len(WORDS) - 1

    class FixtureAttentionModel(tf.Module):
        def _greedy(self, image_bytes):
            rows = tf.shape(image_bytes)[0]
            return {
                features.CAPTION_OUTPUT: tf.fill([rows], ' '.join(WORDS)),
                features.TOKEN_IDS_OUTPUT: tf.tile(token_ids[None], [rows, 1]),
                features.LENGTH_OUTPUT: tf.fill([rows], len(WORDS)),
            }

        @tf.function(input_signature=[spec])
        def caption(self, image_bytes):
            return self._greedy(image_bytes)

        @tf.function(input_signature=[spec])
        def caption_attention(self, image_bytes):
            rows = tf.shape(image_bytes)[0]
            noun_region = WORD_PEAKS[noun] - tf.range(rows)
            noun_row = tf.one_hot(noun_region, features.NUM_REGIONS, 0.9, 0.1 / 63)
            attention = tf.tile(base[None], [rows, 1, 1])
            attention = tf.concat(
                [attention[:, :noun], noun_row[:, None], attention[:, noun + 1 :]], axis=1
            )
            return {**self._greedy(image_bytes), features.ATTENTION_OUTPUT: attention}

    module = FixtureAttentionModel()
    signatures = {features.SERVING_SIGNATURE: module.caption.get_concrete_function()}
    if with_attention:
        signatures[features.ATTENTION_SIGNATURE] = module.caption_attention.get_concrete_function()
    tf.saved_model.save(module, export_dir, signatures=signatures)
    return export_dir


@pytest.fixture(scope='module')
def trainer_models(tmp_path_factory):
    """{'attention': uri, 'init_inject': uri}: Trainer Model artifact directories."""
    from tfx.utils import path_utils

    root = tmp_path_factory.mktemp('trainer_models')
    uris = {}
    for name, with_attention in (('attention', True), ('init_inject', False)):
        uri = str(root / name)
        _save_fixture_model(path_utils.serving_model_path(uri), with_attention)
        uris[name] = uri
    return uris


def _write_raw_examples(uri: str, count: int) -> list:
    """ExampleGen-like GZIP TFRecords of `count` test images; returns their (id, bytes)."""
    import tensorflow as tf

    images = [(f'{i}.jpg', _jpeg(320 - 40 * i, 240, 100 + 20 * i)) for i in range(count)]
    os.makedirs(os.path.join(uri, f'Split-{features.TEST_SPLIT}'))
    path = os.path.join(uri, f'Split-{features.TEST_SPLIT}', 'data_tfrecord-00000.gz')
    with tf.io.TFRecordWriter(path, options='GZIP') as writer:
        for image_id, data in images:
            feature = {
                features.IMAGE_ID_KEY: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[image_id.encode()])
                ),
                features.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                features.CAPTIONS_KEY: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[b'a grey picture'])
                ),
            }
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )
    return images


def _strips(section: str):
    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"', section)
    ]


def test_the_model_query_returns_each_images_words_and_maps(trainer_models, tmp_path):
    from tfx.utils import path_utils

    images = _write_raw_examples(str(tmp_path / 'examples'), 4)
    model_dir = path_utils.serving_model_path(trainer_models['attention'])
    assert features.ATTENTION_SIGNATURE in report.saved_model_signatures(model_dir)
    captions = report.attention_captions(model_dir, images[:3])
    assert [c.image_id for c in captions] == ['0.jpg', '1.jpg', '2.jpg']
    assert [c.image_bytes for c in captions] == [data for _, data in images[:3]]
    for k, item in enumerate(captions):
        assert item.caption == 'a red circle' and item.length == 3
        assert item.attention.shape == (MAX_LEN, features.NUM_REGIONS)
        maps = attention_maps.word_maps(item.caption, item.attention, item.length, True)
        assert [word for word, _ in maps] == [*WORDS, features.END_TOKEN]
        peaks = [int(np.argmax(grid)) for _, grid in maps]
        assert peaks == [WORD_PEAKS[0], WORD_PEAKS[1], WORD_PEAKS[2] - k, END_PEAK]
    assert report.attention_captions(model_dir, []) == []


def test_the_section_shows_one_strip_per_image_and_one_map_per_word(trainer_models, tmp_path):
    raw_uri = str(tmp_path / 'examples')
    _write_raw_examples(raw_uri, 4)
    model_report = {'model': trainer_models['attention']}
    section = report.attention_html(model_report, {}, raw_uri)
    assert section.startswith('<section><h2>Where the model looked</h2>')
    assert section.count('<p><b>a red circle</b></p>') == report.ATTENTION_IMAGES == 3
    assert [h for h in re.findall(r'<h3>([^<]+)</h3>', section)] == ['0.jpg', '1.jpg', '2.jpg']
    strips = _strips(section)
    assert len(strips) == 3
    cell_w = attention_maps.TILE[0] + 8
    for k, strip in enumerate(strips):
        assert strip.width == 4 * cell_w  # three words and <end>
        # Image k is 320 - 40k wide: the overlays keep its aspect ratio.
        width = round(attention_maps.TILE[1] * (320 - 40 * k) / 240)
        tiles = [
            t.crop(((t.width - width) // 2, 0, (t.width - width) // 2 + width, t.height))
            for t in _tiles(strip, 4, attention_maps.COLUMNS)
        ]
        cells = [_cell(*_hottest(t), t.size) for t in tiles]
        noun = WORD_PEAKS[2] - k
        assert cells == [(0, 0), (1, 1), (noun // GRID, noun % GRID), (0, 7)], k


def test_a_model_without_the_signature_adds_nothing_and_a_broken_one_says_why(
    trainer_models, tmp_path
):
    raw_uri = str(tmp_path / 'examples')
    _write_raw_examples(raw_uri, 3)
    assert report.attention_html({'model': trainer_models['init_inject']}, {}, raw_uri) == ''

    broken = tmp_path / 'broken'
    (broken / 'Format-Serving').mkdir(parents=True)
    (broken / 'Format-Serving' / 'saved_model.pb').write_bytes(b'not a SavedModel')
    section = report.attention_html({'model': str(broken)}, {}, raw_uri)
    assert section.startswith('<section><h2>Where the model looked</h2><p>Attention maps missing: ')
    assert 'DecodeError' in section and section.count('<p>') == 1 and '<img' not in section

    missing = report.attention_html({'model': str(tmp_path / 'gone')}, {}, raw_uri)
    assert 'FileNotFoundError: no SavedModel at ' in missing

    no_images = report.attention_html({'model': trainer_models['attention']}, {}, None)
    assert 'Attention maps missing: no test images in ML Metadata' in no_images


def test_the_evaluated_model_wins_and_the_push_is_the_fallback(trainer_models, tmp_path):
    from tfx.utils import path_utils

    evaluated = {'model': trainer_models['init_inject']}
    pushed = {'saved_model': path_utils.serving_model_path(trainer_models['attention'])}
    assert report.attention_model_dir(evaluated, pushed) == path_utils.serving_model_path(
        trainer_models['init_inject']
    )
    cleaned = {'model': str(tmp_path / 'cleaned_away')}
    assert report.attention_model_dir(cleaned, pushed) == pushed['saved_model']
    assert report.attention_model_dir(cleaned, {}) == path_utils.serving_model_path(
        cleaned['model']
    )


def _record_run(tmp_path, model_uri: str):
    """A store as a run leaves it: the ExampleGen's Examples and an evaluation of `model_uri`."""
    paths = configs.LocalPaths(str(tmp_path / 'out'))
    os.makedirs(os.path.dirname(paths.metadata_path))
    store = mlmd_fixtures.Store(paths.metadata_path).store
    examples_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name='Examples'))
    evaluation_type = store.put_artifact_type(
        metadata_store_pb2.ArtifactType(name='ModelEvaluation')
    )
    examples_uri = str(tmp_path / 'examples')
    _write_raw_examples(examples_uri, 3)
    examples = metadata_store_pb2.Artifact(
        type_id=examples_type, uri=examples_uri, state=metadata_store_pb2.Artifact.LIVE
    )
    examples.custom_properties[example_gen_executor.REPORT_PROPERTY].string_value = json.dumps(
        {'examples': {features.TEST_SPLIT: 3}, 'skipped': {}}
    )
    evaluation_dir = tmp_path / 'evaluation'
    evaluation_dir.mkdir()
    metrics = {
        'model': model_uri,
        'blessed': False,
        'failures': ['a test gate'],
        'splits': {
            features.TEST_SPLIT: {
                'metrics': {**{n: 0.5 for n in features.METRIC_NAMES}, 'loss': 1.0},
                'samples': [],
            }
        },
        'tflite': [],
    }
    (evaluation_dir / evaluator_spec.METRICS_FILE).write_text(json.dumps(metrics))
    evaluation = metadata_store_pb2.Artifact(
        type_id=evaluation_type, uri=str(evaluation_dir), state=metadata_store_pb2.Artifact.LIVE
    )
    store.put_artifacts([examples, evaluation])
    return paths


@pytest.mark.parametrize('model', ['attention', 'init_inject'])
def test_build_report_draws_the_maps_only_for_an_attention_model(trainer_models, tmp_path, model):
    paths = _record_run(tmp_path, trainer_models[model])
    built = report.build_report(paths)
    page = open(built['html'], encoding='utf-8').read()
    assert 'Caption model report' in page and 'NOT BLESSED: a test gate' in page
    if model == 'attention':
        start = page.index('<section><h2>Where the model looked</h2>')
        section = page[start : page.index('</section>', start)]
        assert len(_strips(section)) == 3
        assert section.index('<h3>0.jpg</h3>') < section.index('<h3>2.jpg</h3>')
    else:
        assert 'Where the model looked' not in page and 'Attention maps' not in page
