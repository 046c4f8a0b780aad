"""Image bytes in every format, bad images and tiny Examples artifacts, for the extractor tests."""

import io
import os
import struct
import zlib
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from tfx_captioning.cli import sample_data
from tfx_captioning.components.image_feature_extractor import executor, spec
from tfx_captioning.models import features

IN_MEMORY_ARGS = ['--direct_running_mode=in_memory', '--direct_num_workers=1']
MULTI_PROCESSING_ARGS = ['--direct_running_mode=multi_processing', '--direct_num_workers=2']


def noise_image(width: int = 41, height: int = 23, seed: int = 0) -> Image.Image:
    """An RGB image of random pixels; odd sizes exercise row padding in BMP."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=image_format, **options)
    return out.getvalue()


def with_dimensions(data: bytes, image_format: str, height: int, width: int) -> bytes:
    """`data` with its header rewritten to declare `height` x `width` (pixels unchanged)."""
    data = bytearray(data)
    if image_format == 'PNG':
        data[16:24] = struct.pack('>II', width, height)
    elif image_format == 'GIF':
        data[6:10] = struct.pack('<HH', width, height)
    elif image_format == 'BMP':
        data[18:26] = struct.pack('<ii', width, height)
    elif image_format == 'JPEG':
        # The first start-of-frame marker (baseline 0xC0 or progressive 0xC2):
        # marker, length (2), precision (1), height (2), width (2).
        for marker in (b'\xff\xc0', b'\xff\xc2'):
            position = data.find(marker)
            if position >= 0:
                data[position + 5 : position + 9] = struct.pack('>HH', height, width)
                break
        else:
            raise ValueError('no start-of-frame marker')
    else:
        raise ValueError(image_format)
    return bytes(data)


def huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid, fully decodable 1-bit PNG of `width` x `height`, about 50 KB compressed.

    Decoded to RGB it would take width x height x 3 bytes (1.2 GB at 20000²).
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack('>I', len(payload))
            + kind
            + payload
            + struct.pack('>I', zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    row = b'\x00' + b'\x00' * ((width + 7) // 8)  # filter type 0, then black pixels
    compressor = zlib.compressobj(9)
    compressed = b''.join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', header)
        + chunk(b'IDAT', compressed)
        + chunk(b'IEND', b'')
    )


def sample_jpegs(root: str, count: int) -> List[Tuple[str, bytes]]:
    """`count` (image id, JPEG bytes) pairs from the generated sample dataset."""
    sample_data.generate(root, num_images=max(8, count), seed=0)
    images_dir = os.path.join(root, 'Flicker8k_Dataset')
    names = sorted(os.listdir(images_dir))[:count]
    out = []
    for name in names:
        with open(os.path.join(images_dir, name), 'rb') as f:
            out.append((name, f.read()))
    return out


def input_example(
    image_id: Optional[str], image_bytes: Optional[bytes], captions: Sequence[str]
) -> tf.train.Example:
    """An ExampleGen-style tf.Example; None leaves a feature out."""
    feature = {
        features.CAPTIONS_KEY: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[c.encode('utf-8') for c in captions])
        )
    }
    if image_id is not None:
        feature[features.IMAGE_ID_KEY] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[image_id.encode('utf-8')])
        )
    if image_bytes is not None:
        feature[features.IMAGE_KEY] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[image_bytes])
        )
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_examples(
    uri: str, splits: Mapping[str, Sequence[tf.train.Example]]
) -> standard_artifacts.Examples:
    """An Examples artifact at `uri` with one gzipped TFRecord file per split, as ExampleGen writes."""
    examples = standard_artifacts.Examples()
    examples.uri = uri
    examples.split_names = artifact_utils.encode_split_names(list(splits))
    for split, records in splits.items():
        directory = artifact_utils.get_split_uri([examples], split)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, 'data_tfrecord-00000-of-00001.gz')
        with tf.io.TFRecordWriter(path, options='GZIP') as writer:
            for record in records:
                writer.write(record.SerializeToString())
    return examples


def read_examples(examples: standard_artifacts.Examples, split: str) -> Dict[str, Mapping]:
    """image id -> the tf.Example's feature map, read from the split's gzipped TFRecords."""
    files = tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), '*.gz'))
    assert files, f'no TFRecords for split {split}'
    out = {}
    for record in tf.data.TFRecordDataset(files, compression_type='GZIP'):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        image_id = feature[features.IMAGE_ID_KEY].bytes_list.value[0].decode('utf-8')
        assert image_id not in out, f'{image_id} written twice'
        out[image_id] = feature
    return out


def feature_vectors(examples: standard_artifacts.Examples, split: str) -> Dict[str, np.ndarray]:
    return {
        image_id: np.asarray(feature[features.IMAGE_FEATURES_KEY].float_list.value, np.float32)
        for image_id, feature in read_examples(examples, split).items()
    }


def run_extractor(
    examples: standard_artifacts.Examples,
    output_dir: str,
    beam_pipeline_args: Sequence[str] = tuple(IN_MEMORY_ARGS),
    **parameters,
) -> Tuple[standard_artifacts.Examples, standard_artifacts.Model]:
    """Runs the extractor's executor; parameters default to random weights, seed 0."""
    feature_examples = standard_artifacts.Examples()
    feature_examples.uri = os.path.join(output_dir, 'feature_examples')
    encoder_artifact = standard_artifacts.Model()
    encoder_artifact.uri = os.path.join(output_dir, 'encoder')
    exec_properties = spec.ExtractorParameters(
        **{'weights': 'random', 'seed': 0, **parameters}
    ).to_exec_properties()
    context = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=list(beam_pipeline_args)
    )
    executor.Executor(context).Do(
        {spec.EXAMPLES_KEY: [examples]},
        {spec.FEATURE_EXAMPLES_KEY: [feature_examples], spec.ENCODER_KEY: [encoder_artifact]},
        exec_properties,
    )
    return feature_examples, encoder_artifact


def run_example_gen(input_base: str, output_dir: str) -> standard_artifacts.Examples:
    """Runs Flickr8kExampleGen's executor on a Flickr8k-layout directory: the real upstream."""
    from tfx_captioning.components.flickr8k_example_gen import component as example_gen_component
    from tfx_captioning.components.flickr8k_example_gen import executor as example_gen_executor

    examples = standard_artifacts.Examples()
    examples.uri = output_dir
    exec_properties = {
        standard_component_specs.INPUT_BASE_KEY: input_base,
        standard_component_specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(
            example_gen_component.make_input_config()
        ),
        standard_component_specs.OUTPUT_CONFIG_KEY: proto_utils.proto_to_json(
            example_gen_pb2.Output()
        ),
        standard_component_specs.OUTPUT_DATA_FORMAT_KEY: example_gen_pb2.FORMAT_TF_EXAMPLE,
        standard_component_specs.OUTPUT_FILE_FORMAT_KEY: example_gen_pb2.FORMAT_TFRECORDS_GZIP,
    }
    context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=IN_MEMORY_ARGS)
    example_gen_executor.Executor(context).Do(
        {}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties
    )
    return examples
