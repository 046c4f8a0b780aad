"""Flickr8kExampleGen: the executor on real files, read back from real TFRecords."""

import json
import os

import pytest
import tensorflow as tf
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import proto_utils

from tests import bad_images, feature_extractor_fixtures, flickr8k_fixtures
from tfx_captioning.cli import sample_data
from tfx_captioning.components.flickr8k_example_gen import component, executor, layout
from tfx_captioning.models import features, image_files


def run_executor(input_base: str, output_dir: str) -> standard_artifacts.Examples:
    return feature_extractor_fixtures.run_example_gen(input_base, output_dir)


def read_split(examples: standard_artifacts.Examples, split: str) -> dict:
    """image_id -> (image bytes, captions) read back from the split's TFRecords."""
    files = tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), '*.gz'))
    assert files, f'no TFRecords written for split {split}'
    out = {}
    for record in tf.data.TFRecordDataset(files, compression_type='GZIP'):
        ex = tf.train.Example.FromString(record.numpy()).features.feature
        image_id = ex[features.IMAGE_ID_KEY].bytes_list.value[0].decode()
        out[image_id] = (
            ex[features.IMAGE_KEY].bytes_list.value[0],
            [c.decode('utf-8') for c in ex[features.CAPTIONS_KEY].bytes_list.value],
        )
    return out


@pytest.fixture(scope='module')
def defective_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('flickr')
    flickr8k_fixtures.write_defective_layout(str(root))
    examples = run_executor(str(root), str(tmp_path_factory.mktemp('examples')))
    return root, examples


def test_good_images_are_written_with_all_captions(defective_run):
    root, examples = defective_run
    assert artifact_utils.decode_split_names(examples.split_names) == ['train', 'eval', 'test']
    train = read_split(examples, 'train')
    assert sorted(train) == ['good1.jpg', 'good2.jpg', 'good3.png']
    for image_id, (image_bytes, captions) in train.items():
        with open(os.path.join(root, layout.IMAGES_DIR, image_id), 'rb') as f:
            assert image_bytes == f.read()
        assert captions == [
            layout.normalize_whitespace(c) for c in flickr8k_fixtures.GOOD_CAPTIONS[image_id]
        ]
    assert sorted(read_split(examples, 'eval')) == ['good4.jpg']
    assert sorted(read_split(examples, 'test')) == ['good5.jpg']


def test_every_skip_is_counted_on_the_artifact(defective_run):
    _, examples = defective_run
    for reason, count in flickr8k_fixtures.EXPECTED_SKIPS.items():
        assert (
            examples.get_int_custom_property(executor.SKIPPED_PROPERTY_PREFIX + reason) == count
        ), reason
    report = json.loads(examples.get_string_custom_property(executor.REPORT_PROPERTY))
    assert report['skipped'] == flickr8k_fixtures.EXPECTED_SKIPS
    assert report['examples'] == {'train': 3, 'eval': 1, 'test': 1}
    assert examples.get_int_custom_property(executor.EXAMPLES_PROPERTY_PREFIX + 'train') == 3


def test_sample_dataset_round_trips(sample_examples):
    data_root, counts, examples = sample_examples
    plan = layout.load_plan(data_root)
    for split, records in plan.splits.items():
        written = read_split(examples, split)
        assert sorted(written) == sorted(r.image_id for r in records)
        for record in records:
            with open(record.path, 'rb') as f:
                assert written[record.image_id][0] == f.read()
            assert written[record.image_id][1] == list(record.captions)
            assert len(record.captions) == 5
    assert sum(counts.values()) == 16


def test_wrong_directory_fails_at_once_naming_what_is_missing(tmp_path):
    (tmp_path / 'Flicker8k_Dataset').mkdir()
    with pytest.raises(layout.Flickr8kLayoutError, match=r'missing Flickr8k\.token\.txt'):
        run_executor(str(tmp_path), str(tmp_path / 'examples'))


def test_split_patterns_must_name_files():
    config = component.make_input_config({'train': 'Flickr_8k.*.txt'})
    with pytest.raises(ValueError, match='must be the name of one'):
        executor.split_files_from_config(proto_utils.proto_to_json(config))


def test_check_image_rejects_bad_bytes():
    assert executor.check_image(flickr8k_fixtures.jpeg_bytes()) is None
    assert executor.check_image(flickr8k_fixtures.png_bytes()) is None
    assert executor.check_image(b'').reason == image_files.EMPTY
    truncated = flickr8k_fixtures.jpeg_bytes(size=(300, 200))[:300]
    assert executor.check_image(truncated).reason == image_files.NOT_DECODABLE
    assert executor.check_image(b'GIF89a garbage') is not None
    assert executor.check_image(b'II*\x00 a TIFF').reason == image_files.UNSUPPORTED_FORMAT
    assert executor.check_image(bad_images.png_bomb()).reason == image_files.TOO_MANY_PIXELS


def test_a_decompression_bomb_is_skipped_and_counted_as_oversized(tmp_path):
    sample_data.generate(str(tmp_path / 'data'), num_images=8, seed=0)
    train = layout.load_plan(str(tmp_path / 'data')).splits['train']
    with open(train[0].path, 'wb') as f:
        f.write(bad_images.png_bomb())  # a 30000x30000 PNG under a .jpg name

    examples = run_executor(str(tmp_path / 'data'), str(tmp_path / 'examples'))

    assert train[0].image_id not in read_split(examples, 'train')
    assert len(read_split(examples, 'train')) == len(train) - 1
    report = json.loads(examples.get_string_custom_property(executor.REPORT_PROPERTY))
    assert report['skipped'][layout.REASON_OVERSIZED_IMAGE] == 1
    assert report['skipped'][layout.REASON_UNREADABLE_IMAGE] == 0


def test_component_construction():
    gen = component.Flickr8kExampleGen(input_base='/data/flickr8k')
    assert gen.outputs['examples'].type_name == 'Examples'
    config = example_gen_pb2.Input()
    proto_utils.json_to_proto(gen.exec_properties['input_config'], config)
    assert {s.name: s.pattern for s in config.splits} == dict(layout.SPLIT_FILES)
    with pytest.raises(ValueError, match='input_base'):
        component.Flickr8kExampleGen(input_base='')
