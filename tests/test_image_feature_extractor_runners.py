"""ImageFeatureExtractor gives the same features under the in-memory and multi-processing runners.

Multi-processing starts two Beam worker processes that each load the encoder
from the artifact (rather than reusing the driver's model, as in-memory does)
and receive reshuffled images, so this also checks the artifact round trip
and the counters gathered from other processes.
"""

import numpy as np
import pytest

from tests import feature_extractor_fixtures as fx
from tfx_captioning.components.image_feature_extractor import executor


@pytest.mark.slow
def test_multi_processing_gives_the_in_memory_features_and_counts(tmp_path):
    jpegs = fx.sample_jpegs(str(tmp_path / 'sample'), 5)
    records = {
        'train': [fx.input_example(i, data, ['a caption']) for i, data in jpegs[:4]]
        + [
            fx.input_example('empty.jpg', b'', ['a caption']),
            fx.input_example('text.jpg', b'no image here', ['a caption']),
        ],
        'eval': [fx.input_example(i, data, ['a caption']) for i, data in jpegs[4:]],
    }
    examples = fx.write_examples(str(tmp_path / 'examples'), records)

    runs = {
        name: fx.run_extractor(examples, str(tmp_path / name), args, batch_size=2)
        for name, args in (
            ('in_memory', fx.IN_MEMORY_ARGS),
            ('multi_processing', fx.MULTI_PROCESSING_ARGS),
        )
    }

    (memory_examples, memory_encoder), (multi_examples, multi_encoder) = runs.values()
    assert memory_encoder.get_string_custom_property(
        executor.ENCODER_FINGERPRINT_PROPERTY
    ) == multi_encoder.get_string_custom_property(executor.ENCODER_FINGERPRINT_PROPERTY)
    for split in records:
        in_memory = fx.feature_vectors(memory_examples, split)
        multi = fx.feature_vectors(multi_examples, split)
        assert sorted(in_memory) == sorted(multi) and in_memory
        for image_id, vector in in_memory.items():
            # Equal up to float32 rounding: batches are composed differently.
            np.testing.assert_allclose(multi[image_id], vector, rtol=1e-5, atol=1e-6)
    assert memory_examples.get_string_custom_property(
        executor.REPORT_PROPERTY
    ) == multi_examples.get_string_custom_property(executor.REPORT_PROPERTY)
    assert multi_examples.get_int_custom_property(executor.EXAMPLES_PROPERTY_PREFIX + 'train') == 4
    assert (
        multi_examples.get_int_custom_property(
            executor.SKIPPED_PROPERTY_PREFIX + executor.REASON_EMPTY_IMAGE
        )
        == 1
    )
