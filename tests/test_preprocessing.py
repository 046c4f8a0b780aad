"""Transform's preprocessing_fn through a real tf.Transform Beam run, and its pure-TF helpers."""

import numpy as np
import pytest
import tensorflow as tf

from tests import captioning_fixtures
from tfx_captioning.models import features, preprocessing
from tfx_captioning.models.hparams import HParams

MAX_LEN = 6
MIN_WORD_COUNT = 2


def _image(image_id, captions, first_feature):
    raw = np.full(features.FEATURE_SIZE, 0.25, np.float32)  # every other dimension constant
    raw[0] = first_feature
    return {
        features.IMAGE_ID_KEY: image_id,
        features.IMAGE_FEATURES_KEY: raw,
        features.CAPTIONS_KEY: captions,
    }


# Word counts over the split: dog 7, a 6, runs 2, the 1, zebra 1.
IMAGES = [
    _image(b'a.jpg', [b'A dog runs.', b'The Dog, runs!!', b'zebra', b'?!.'], 1.0),
    _image(b'b.jpg', [b'a dog a dog a dog a dog a dog'], 2.0),
    _image(b'c.jpg', [], 6.0),
]
START, END, PAD, UNK = features.START_ID, features.END_ID, features.PAD_ID, features.UNK_ID
DOG, A, RUNS = 4, 5, 6


@pytest.fixture(scope='module')
def transformed(tmp_path_factory):
    """(transformed instances by image id, TFTransformOutput) of one real Beam run."""
    run = captioning_fixtures.run_transform(
        {features.TRAIN_SPLIT: IMAGES},
        str(tmp_path_factory.mktemp('preprocessing')),
        custom_config=HParams(max_len=MAX_LEN, min_word_count=MIN_WORD_COUNT).transform_config(),
    )
    dataset = tf.data.TFRecordDataset(
        tf.io.gfile.glob(run.file_pattern(features.TRAIN_SPLIT)), compression_type='GZIP'
    )
    spec = run.tft_output.transformed_feature_spec()
    rows = {}
    for record in dataset:
        parsed = tf.io.parse_single_example(record, spec)
        rows[parsed[features.IMAGE_ID_KEY].numpy()] = parsed
    return rows, run.tft_output


def test_vocabulary_reserved_tokens_first_then_words_by_count(transformed):
    _, tft_output = transformed
    vocabulary = [w.decode() for w in tft_output.vocabulary_by_name(features.VOCAB_NAME)]
    # "the" and "zebra" (seen once) are below min_word_count=2.
    assert vocabulary == list(features.RESERVED_TOKENS) + ['dog', 'a', 'runs']
    assert vocabulary.index(features.PAD_TOKEN) == features.PAD_ID == 0
    path = tft_output.vocabulary_file_by_name(features.VOCAB_NAME)
    with open(path) as f:
        assert f.read().splitlines() == vocabulary


def test_captions_become_start_words_end_padded(transformed):
    rows, _ = transformed
    ids = rows[b'a.jpg'][features.CAPTION_IDS_KEY].numpy()
    np.testing.assert_array_equal(
        ids,
        [
            [START, A, DOG, RUNS, END, PAD, PAD],  # "A dog runs."
            [START, UNK, DOG, RUNS, END, PAD, PAD],  # "The Dog, runs!!": 'the' is rare
            [START, UNK, END, PAD, PAD, PAD, PAD],  # "zebra": unknown word
        ],  # "?!." has no word and is dropped
    )


def test_long_caption_truncated_keeping_end(transformed):
    rows, _ = transformed
    ids = rows[b'b.jpg'][features.CAPTION_IDS_KEY].numpy()
    np.testing.assert_array_equal(ids, [[START, A, DOG, A, DOG, A, END]])
    assert ids.shape[1] == MAX_LEN + 1


def test_image_without_captions_has_zero_rows(transformed):
    rows, _ = transformed
    assert rows[b'c.jpg'][features.CAPTION_IDS_KEY].shape == (0, MAX_LEN + 1)


def test_features_z_scored_per_dimension(transformed):
    rows, _ = transformed
    normalized = np.stack([rows[i][features.NORMALIZED_FEATURES_KEY].numpy() for i in rows])
    first = np.array([1.0, 2.0, 6.0])
    expected_first = (first - first.mean()) / first.std()
    by_id = {image_id: k for k, image_id in enumerate(rows)}
    for image_id, value in zip((b'a.jpg', b'b.jpg', b'c.jpg'), expected_first):
        assert normalized[by_id[image_id], 0] == pytest.approx(value, abs=1e-5)
    # A constant dimension has zero variance: TFT centres it without dividing.
    np.testing.assert_allclose(normalized[:, 1:], 0.0, atol=1e-6)


def test_transformed_feature_spec(transformed):
    _, tft_output = transformed
    spec = tft_output.transformed_feature_spec()
    assert set(spec) == {
        features.IMAGE_ID_KEY,
        features.NORMALIZED_FEATURES_KEY,
        features.CAPTION_IDS_KEY,
    }
    assert spec[features.NORMALIZED_FEATURES_KEY].shape == [features.FEATURE_SIZE]
    assert spec[features.CAPTION_IDS_KEY].partitions[0].length == MAX_LEN + 1


@pytest.mark.parametrize(
    'raw, expected',
    [
        ('A dog runs.', 'a dog runs'),
        ('  Two\tdogs,\n play-fight!! ', 'two dogs play fight'),
        ("A man's hat", "a man's hat"),  # the seed tutorial's filters keep apostrophes
        ('<start> x <END>', 'start x end'),  # no caption can spell a reserved token
        ('ÉCOLE Ça', 'école ça'),  # UTF-8 lowercasing
        ('?!...', ''),
    ],
)
def test_normalize_caption(raw, expected):
    assert preprocessing.normalize_caption(tf.constant(raw)).numpy().decode() == expected


def test_normalize_caption_keeps_shape():
    out = preprocessing.normalize_caption(tf.constant([['A.', 'B!'], ['C', 'D']]))
    assert out.shape == (2, 2)


def test_caption_ids_truncates_and_always_ends():
    word_ids = tf.ragged.constant([[7, 8, 9, 10], [], [7]], dtype=tf.int64)
    ids = preprocessing.caption_ids(word_ids, max_len=3, start_id=2, end_id=3, pad_id=0)
    np.testing.assert_array_equal(ids, [[2, 7, 8, 3], [2, 3, 0, 0], [2, 7, 3, 0]])


def test_captions_accepted_dense_sparse_or_ragged():
    dense = tf.constant([[b'a', b'b'], [b'c', b'd']])
    sparse = tf.sparse.from_dense(dense)
    ragged = tf.ragged.constant([[b'a', b'b'], [b'c', b'd']])
    for captions in (dense, sparse, ragged):
        assert preprocessing._to_ragged(captions).to_list() == [[b'a', b'b'], [b'c', b'd']]


def test_custom_config_keys_are_hparams_fields():
    config = HParams(max_len=9, min_word_count=3).transform_config()
    assert config == {features.MAX_LEN_CONFIG: 9, features.MIN_WORD_COUNT_CONFIG: 3}
    assert HParams.from_custom_config(config).max_len == 9


def _normalized_by_batch_size(instances, desired_batch_size: int, temp_dir: str):
    """image id -> normalized features, from one Beam run feeding Transform batches of this size."""
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(captioning_fixtures.raw_feature_spec())
    )
    config = HParams(max_len=MAX_LEN, min_word_count=1).transform_config()
    with tft_beam.Context(
        temp_dir=temp_dir, desired_batch_size=desired_batch_size, force_tf_compat_v1=False
    ):
        (transformed, _), _ = (list(instances), metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: preprocessing.preprocessing_fn(inputs, config),
            output_record_batches=False,
        )
    return {t[features.IMAGE_ID_KEY]: t[features.NORMALIZED_FEATURES_KEY] for t in transformed}


def test_z_scores_do_not_depend_on_how_beam_batches_the_examples(tmp_path):
    # TFX's Transform lets Beam size its input batches by measured time, so two
    # runs of the same data may batch it differently. With float32 statistics
    # this moved z-scores by up to 2e-4 (10 % of some); training amplified that
    # into different captions. In float64, results agree to float32 rounding.
    instances = captioning_fixtures.synthetic_images(96, seed=4)
    for instance in instances:  # O(1) features of varied scale, as InceptionV3's
        instance[features.IMAGE_FEATURES_KEY] = instance[features.IMAGE_FEATURES_KEY] * 3.0 + 1.5
    one = _normalized_by_batch_size(instances, 1, str(tmp_path / 'one'))
    many = _normalized_by_batch_size(instances, 96, str(tmp_path / 'many'))
    odd = _normalized_by_batch_size(instances, 7, str(tmp_path / 'odd'))
    assert one.keys() == many.keys() == odd.keys()
    for image_id, values in one.items():
        assert values.dtype == np.float32
        np.testing.assert_array_max_ulp(many[image_id], values, maxulp=1)
        np.testing.assert_array_max_ulp(odd[image_id], values, maxulp=1)
