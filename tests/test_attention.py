"""The attention decoder through the real pieces: TFX's Transform and Trainer executors,
the exported SavedModel, its TFLite variant in LiteRT, and the evaluator's loss.

Extractor-like examples with region features (`captioning_fixtures.
synthetic_images_with_regions`, float16 bytes as the extractor stores them)
go through TFX's Transform executor with our `preprocessing_fn` and TFX's
Trainer GenericExecutor with our `run_fn` and ``decoder='attention'``.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from tfx.utils import path_utils

from tests import captioning_fixtures
from tests.flickr8k_fixtures import jpeg_bytes
from tfx_captioning.components.caption_evaluator import executor as evaluator_executor
from tfx_captioning.components.image_feature_extractor import executor as extractor_executor
from tfx_captioning.models import export, features, image_preprocessing, tflite_runtime, trainer
from tfx_captioning.models.hparams import HParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def attention_hparams(caption_hparams):
    return caption_hparams.__class__(
        **{
            **caption_hparams.to_custom_config(),
            'decoder': features.DECODER_ATTENTION,
            'attention_units': 16,
            'tflite_quantization': 'float32',
        }
    )


@pytest.fixture(scope='module')
def raw_splits():
    return {
        features.TRAIN_SPLIT: captioning_fixtures.synthetic_images_with_regions(24, seed=1),
        features.EVAL_SPLIT: captioning_fixtures.synthetic_images_with_regions(8, seed=2),
    }


@pytest.fixture(scope='module')
def transformed(tmp_path_factory, raw_splits, attention_hparams):
    root = str(tmp_path_factory.mktemp('attention_transform'))
    return captioning_fixtures.run_transform_executor(
        raw_splits, root, attention_hparams.transform_config()
    )


@pytest.fixture(scope='module')
def trained(tmp_path_factory, transformed, attention_hparams):
    examples, graph = transformed
    root = str(tmp_path_factory.mktemp('attention_trainer'))
    return captioning_fixtures.train_model(examples, graph, attention_hparams, root, num_steps=12)


def _regions(instances):
    return np.stack(
        [extractor_executor.decode_regions(i[features.IMAGE_REGIONS_KEY]) for i in instances]
    )


def test_transform_z_scores_the_regions_per_channel_over_training(transformed, raw_splits):
    examples, graph = transformed
    tft_output = tft.TFTransformOutput(graph.uri)
    train = _regions(raw_splits[features.TRAIN_SPLIT]).astype(np.float64)
    mean = train.reshape(-1, features.FEATURE_SIZE).mean(axis=0)
    std = train.reshape(-1, features.FEATURE_SIZE).std(axis=0)
    spec = tft_output.transformed_feature_spec()
    files = tf.io.gfile.glob(os.path.join(examples.uri, f'Split-{features.EVAL_SPLIT}', '*'))
    written = np.stack(
        [
            tf.io.parse_single_example(record, spec)[features.NORMALIZED_REGIONS_KEY].numpy()
            for record in tf.data.TFRecordDataset(files, compression_type='GZIP')
        ]
    ).reshape(-1, features.NUM_REGIONS, features.FEATURE_SIZE)
    by_id = {i[features.IMAGE_ID_KEY]: i for i in raw_splits[features.EVAL_SPLIT]}
    ids = [
        tf.io.parse_single_example(record, spec)[features.IMAGE_ID_KEY].numpy()
        for record in tf.data.TFRecordDataset(files, compression_type='GZIP')
    ]
    expected = (_regions([by_id[i] for i in ids]) - mean) / std
    np.testing.assert_allclose(written, expected, rtol=1e-4, atol=1e-3)
    # The exported model's constants are Transform's own statistics.
    scale, offset = export.region_normalization(tft_output)
    np.testing.assert_allclose(scale, 1 / std, rtol=1e-4)
    np.testing.assert_allclose(offset, -mean / std, rtol=1e-4, atol=1e-4)


def test_transform_without_regions_writes_none_and_the_trainer_says_why(caption_transform_run):
    tft_output = caption_transform_run.tft_output
    assert features.NORMALIZED_REGIONS_KEY not in tft_output.transformed_feature_spec()
    assert export.region_normalization(tft_output) is None
    with pytest.raises(ValueError, match='region_features=True'):
        trainer.input_fn(
            [caption_transform_run.file_pattern(features.TRAIN_SPLIT)],
            tft_output,
            batch_size=4,
            shuffle=False,
            repeat=False,
            regions=True,
        )


def test_the_exported_attention_model_captions_bytes_and_features_alike(trained, attention_hparams):
    model, _, base_model = trained
    loaded = tf.saved_model.load(path_utils.serving_model_dir(model.uri))
    assert {
        features.SERVING_SIGNATURE,
        features.BEAM_SIGNATURE,
        features.ATTENTION_SIGNATURE,
        features.FEATURES_SIGNATURE,
        features.LOSS_SIGNATURE,
    } <= set(loaded.signatures)
    images = tf.constant(
        [jpeg_bytes((220, 30, 30), (120, 90)), jpeg_bytes((30, 30, 220), (90, 120))]
    )
    greedy = loaded.signatures[features.SERVING_SIGNATURE](**{features.IMAGE_BYTES_INPUT: images})
    attended = loaded.signatures[features.ATTENTION_SIGNATURE](
        **{features.IMAGE_BYTES_INPUT: images}
    )
    token_ids = greedy[features.TOKEN_IDS_OUTPUT].numpy()
    np.testing.assert_array_equal(attended[features.TOKEN_IDS_OUTPUT].numpy(), token_ids)
    weights = attended[features.ATTENTION_OUTPUT].numpy()
    assert weights.shape == (2, attention_hparams.max_len, features.NUM_REGIONS)
    for row in range(2):
        emitted = int(np.sum(token_ids[row] != features.PAD_ID))
        np.testing.assert_allclose(weights[row, :emitted].sum(axis=-1), 1.0, atol=1e-4)
        assert np.all(weights[row, emitted:] == 0)

    # The extractor's pooled features and regions give the same captions from
    # the features signature (the path the evaluator scores).
    runner = extractor_executor.EncoderRunner.load(base_model.uri)
    pooled, regions = runner.encode_with_regions(
        image_preprocessing.preprocess_batch(images).numpy()
    )
    np.testing.assert_allclose(pooled, regions.mean(axis=1), rtol=1e-4, atol=1e-5)
    stored = np.stack(
        [extractor_executor.decode_regions(extractor_executor.encode_regions(r)) for r in regions]
    )
    from_features = loaded.signatures[features.FEATURES_SIGNATURE](
        **{features.IMAGE_FEATURES_INPUT: pooled, features.IMAGE_REGIONS_INPUT: regions}
    )
    np.testing.assert_array_equal(from_features[features.TOKEN_IDS_OUTPUT].numpy(), token_ids)
    from_stored = loaded.signatures[features.FEATURES_SIGNATURE](
        **{features.IMAGE_FEATURES_INPUT: pooled, features.IMAGE_REGIONS_INPUT: stored}
    )
    assert from_stored[features.TOKEN_IDS_OUTPUT].shape == token_ids.shape
    beam = loaded.signatures[features.BEAM_SIGNATURE](**{features.IMAGE_BYTES_INPUT: images})
    assert beam[features.LOG_PROB_OUTPUT].shape == (2,)


def test_the_evaluator_scores_loss_and_captions_of_an_attention_model(trained, transformed):
    model, _, _ = trained
    examples, graph = transformed
    loaded = tf.saved_model.load(path_utils.serving_model_dir(model.uri))
    spec = tft.TFTransformOutput(graph.uri).transformed_feature_spec()
    loss = evaluator_executor.split_loss(
        loaded.signatures, examples, features.EVAL_SPLIT, spec, batch_size=4
    )
    assert 0 < loss < 10
    with pytest.raises(ValueError, match='kept none'):
        evaluator_executor.generate_captions(
            loaded.signatures,
            [
                {
                    features.IMAGE_FEATURES_KEY: tf.zeros([2, features.FEATURE_SIZE]),
                    features.IMAGE_REGIONS_KEY: tf.constant([b'', b'']),
                }
            ],
        )


def test_the_tflite_variant_gives_the_saved_models_captions_in_litert(trained):
    model, _, _ = trained
    tflite_path = os.path.join(
        model.uri, features.TFLITE_MODEL_DIR, 'float32', features.TFLITE_FILE
    )
    loaded = tf.saved_model.load(path_utils.serving_model_dir(model.uri))
    for beam in (False, True):
        captioner = tflite_runtime.TFLiteCaptioner(tflite_path, beam=beam)
        signature = features.BEAM_SIGNATURE if beam else features.SERVING_SIGNATURE
        for colour in ((220, 30, 30), (30, 170, 40)):
            data = jpeg_bytes(colour, (160, 120))
            pixels = image_preprocessing.preprocess_batch(tf.constant([data])).numpy()
            expected = loaded.signatures[signature](
                **{features.IMAGE_BYTES_INPUT: tf.constant([data])}
            )[features.TOKEN_IDS_OUTPUT].numpy()[0]
            np.testing.assert_array_equal(captioner.token_ids(pixels), expected)


def test_the_model_metadata_names_the_decoder(trained):
    model, _, _ = trained
    import json

    with open(
        os.path.join(
            path_utils.serving_model_dir(model.uri),
            features.WARMUP_REQUESTS_DIR,
            features.DECODING_FILE,
        )
    ) as f:
        decoding = json.load(f)
    assert decoding['decoder'] == features.DECODER_ATTENTION
    assert decoding['attention']['signatures'] == [features.ATTENTION_SIGNATURE]
    assert HParams.from_custom_config({'decoder': 'attention'}).attention
