"""The InceptionV3 image encoder: building it, saving it as an artifact, loading it.

The ImageFeatureExtractor computes features with this encoder, and the Trainer
builds the serving model around the *same* encoder (its `base_model` input),
so the features seen in training and at serving come from identical weights,
including the random ones of the offline demo.

Encoder: a Keras 2 (`tf_keras`, as the Trainer uses) ``InceptionV3(include_top=False,
pooling='avg')`` mapping float32
``[None, 299, 299, 3]`` in [-1, 1] (see `models.image_preprocessing`) to
float32 ``[None, 2048]``.

Weights (`build_inception_encoder`):

* ``'imagenet'``: Keras' ImageNet weights file
  ``inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5``, read from the
  Keras cache ``~/.keras/models/`` (downloaded there when the machine is
  online). Offline, put the file there, or pass its path instead.
* a path (local or any filesystem TensorFlow reads, such as gs://) to an HDF5
  file of InceptionV3 no-top weights, ending in ``.h5`` or ``.hdf5``.
* ``'random'``: deterministic He-uniform kernels drawn with NumPy from `seed`,
  for offline demos and tests only (logged loudly). The same seed gives the
  same weights on every machine.

Compute precision (`resolve_precision`): ``'float32'``, ``'bfloat16'`` (Keras'
``mixed_bfloat16``: bfloat16 compute, float32 weights, features cast back to
float32), or ``'auto'``, which is bfloat16 only where the CPU multiplies
bfloat16 natively (AVX512-BF16 or AMX, read from ``/proc/cpuinfo``), since
elsewhere bfloat16 is emulated and slower than float32. Only the
ImageFeatureExtractor uses it; the weights file and the served model are
always float32.

Layout of the encoder artifact (a standard ``Model`` artifact)::

    <artifact uri>/
      Format-Serving/              what the Trainer receives as fn_args.base_model
        encoder_spec.json          how the encoder was built (`EncoderSpec`, JSON)
        encoder_weights.h5         every weight, Keras HDF5 (Model.save_weights)

`load_encoder` accepts the artifact uri or its ``Format-Serving`` directory,
rebuilds the architecture from code and loads ``encoder_weights.h5``, checking
the file's SHA-256 before and the weights' fingerprint after.
"""

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from typing import Any, Callable, Dict, Optional, Tuple

import h5py
import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfx_captioning.models import features

WEIGHTS_IMAGENET = 'imagenet'
WEIGHTS_RANDOM = 'random'
WEIGHTS_FILE_SUFFIXES = ('.h5', '.hdf5')
DEFAULT_SEED = 0

IMAGENET_WEIGHTS_FILE = 'inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5'
IMAGENET_WEIGHTS_URL = (
    'https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/'
    + IMAGENET_WEIGHTS_FILE
)
# The MD5 Keras checks the cached file against (tf_keras inception_v3.py).
IMAGENET_WEIGHTS_MD5 = 'bcbd6486424b2319ff4ef7d526e38f63'

# Equal to tfx.utils.path_constants.SERVING_MODEL_DIR, the directory TFX's
# Trainer passes as fn_args.base_model. Spelled here so that serving and export
# code can load the encoder without importing TFX.
MODEL_DIR = 'Format-Serving'
SPEC_FILE = 'encoder_spec.json'
WEIGHTS_FILE = 'encoder_weights.h5'
SPEC_FORMAT_VERSION = 1

PRECISION_AUTO = 'auto'
PRECISION_FLOAT32 = 'float32'
PRECISION_BFLOAT16 = 'bfloat16'
PRECISIONS = (PRECISION_AUTO, PRECISION_FLOAT32, PRECISION_BFLOAT16)
# /proc/cpuinfo flags (Linux's names) of native bfloat16 arithmetic that
# oneDNN uses: AVX512-BF16 dot products (Cooper Lake, Zen 4) and AMX tiles
# (Sapphire Rapids).
NATIVE_BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')
CPUINFO_PATH = '/proc/cpuinfo'


class WeightsNotAvailableError(RuntimeError):
    """The ImageNet weights file is neither cached nor downloadable."""


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """How an encoder artifact was built; written as ``encoder_spec.json``.

    Attributes:
      weights: the weights spec it was built from ('imagenet', 'random' or a path).
      seed: the seed of random weights (recorded for every spec).
      weights_sha256: SHA-256 of the ``encoder_weights.h5`` file, checked before
        loading. HDF5 files also store layer names, which Keras numbers per
        process, so equal weights may give different files.
      weights_fingerprint: SHA-256 of the weight values themselves
        (`weights_fingerprint`), checked after loading; equal weights always
        give equal fingerprints.
      architecture: always 'InceptionV3(include_top=False, pooling=avg)'.
      image_size: input height and width.
      feature_size: output width.
      input_range: pixel scaling the encoder expects.
      tensorflow_version: TensorFlow that wrote the artifact.
      format_version: version of this layout.
      requested_precision: the extractor's compute precision as asked for
        ('auto', 'float32' or 'bfloat16').
      precision: the precision the extractor's features were computed in
        ('float32' or 'bfloat16', 'auto' resolved on the machine that ran
        it). The weights file and the served model are float32 either way.
    """

    weights: str
    seed: int
    weights_sha256: str
    weights_fingerprint: str
    architecture: str = 'InceptionV3(include_top=False, pooling=avg)'
    image_size: int = features.IMAGE_SIZE
    feature_size: int = features.FEATURE_SIZE
    input_range: tuple = (-1.0, 1.0)
    tensorflow_version: str = tf.__version__
    format_version: int = SPEC_FORMAT_VERSION
    # Defaults for artifacts written before precisions existed (all float32).
    requested_precision: str = PRECISION_FLOAT32
    precision: str = PRECISION_FLOAT32

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> 'EncoderSpec':
        values: Dict[str, Any] = json.loads(text)
        if values.get('format_version') != SPEC_FORMAT_VERSION:
            raise ValueError(
                f'Encoder spec format_version {values.get("format_version")!r} is not '
                f'{SPEC_FORMAT_VERSION}; this code cannot load it.'
            )
        values['input_range'] = tuple(values['input_range'])
        return cls(**values)


def validate_weights(weights: str) -> None:
    """Checks a weights spec without touching any file.

    Raises:
      ValueError: `weights` is not 'imagenet', 'random' or a path to an HDF5 file.
    """
    if not isinstance(weights, str) or not weights:
        raise ValueError(
            f'weights must be {WEIGHTS_IMAGENET!r}, {WEIGHTS_RANDOM!r} or the path of an HDF5 '
            f'weights file, got {weights!r}.'
        )
    if weights in (WEIGHTS_IMAGENET, WEIGHTS_RANDOM):
        return
    if not weights.lower().endswith(WEIGHTS_FILE_SUFFIXES):
        raise ValueError(
            f'weights={weights!r}: expected {WEIGHTS_IMAGENET!r}, {WEIGHTS_RANDOM!r} or the '
            f'path of an HDF5 weights file ending in {" or ".join(WEIGHTS_FILE_SUFFIXES)} '
            f'(for example ~/.keras/models/{IMAGENET_WEIGHTS_FILE}).'
        )


def validate_precision(precision: str) -> None:
    """Raises ValueError unless `precision` is one of `PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f'encoder precision must be one of {PRECISIONS}, got {precision!r}.')


def has_native_bf16(cpuinfo: str) -> bool:
    """Whether every CPU listed in `cpuinfo` (the text of /proc/cpuinfo) computes bfloat16 natively.

    Pure, so it can be tested on sample texts. Reads the x86 ``flags`` line of
    each processor and asks for one of `NATIVE_BF16_CPU_FLAGS` on all of them
    (a hybrid CPU whose small cores lack it would run some threads emulated).
    Flags are whole words: ``avx512_bf16`` must not match inside another flag.
    Text without any ``flags`` line (other architectures, an unreadable file)
    gives False: bfloat16 is only chosen where it is known to be native.
    """
    flag_sets = []
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(':')
        if sep and key.strip() == 'flags':
            flag_sets.append(set(value.split()))
    return bool(flag_sets) and all(
        any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS) for flags in flag_sets
    )


def read_cpuinfo(path: str = CPUINFO_PATH) -> str:
    """The text of /proc/cpuinfo, or '' where there is none (not Linux)."""
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return f.read()
    except OSError:
        return ''


def resolve_precision(requested: str, cpuinfo: Optional[str] = None) -> str:
    """'float32' or 'bfloat16': `requested`, with 'auto' decided by this machine's CPU.

    Args:
      requested: 'auto', 'float32' or 'bfloat16'.
      cpuinfo: the text of /proc/cpuinfo; read from this machine when None.

    Raises:
      ValueError: `requested` is not a precision.
    """
    validate_precision(requested)
    if requested != PRECISION_AUTO:
        return requested
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    return PRECISION_BFLOAT16 if has_native_bf16(cpuinfo) else PRECISION_FLOAT32


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """`model` itself for 'float32'; for 'bfloat16', a mixed-bfloat16 copy with the same weights.

    The copy computes in bfloat16 and keeps float32 variables (Keras'
    ``mixed_bfloat16`` policy), so its outputs are bfloat16: `make_encode_fn`
    casts them back to float32.

    Raises:
      ValueError: `precision` is not 'float32' or 'bfloat16' (resolve 'auto' first).
    """
    if precision == PRECISION_FLOAT32:
        return model
    if precision != PRECISION_BFLOAT16:
        raise ValueError(
            f"precision must be 'float32' or 'bfloat16' here, got {precision!r} "
            '(resolve_precision decides auto).'
        )
    # The policy is global while the layers are built: set it only around the build.
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
    try:
        copy = _inception_v3()
    finally:
        keras.mixed_precision.set_global_policy('float32')
    copy.set_weights(model.get_weights())
    return copy


def keras_cache_path() -> str:
    """Where Keras looks for (and downloads) the ImageNet weights file."""
    cache_dir = os.path.join(os.path.expanduser('~'), '.keras')
    # The same rule as keras.utils.get_file: /tmp/.keras when ~/.keras is
    # missing or read-only.
    if not os.access(cache_dir, os.W_OK):
        cache_dir = os.path.join('/tmp', '.keras')
    return os.path.join(cache_dir, 'models', IMAGENET_WEIGHTS_FILE)


def cached_imagenet_weights() -> Optional[str]:
    """The ImageNet weights file in the Keras cache, or None; never downloads.

    Lets a runner choose 'imagenet' when the file is there and fall back to
    'random' (loudly) on an offline machine without it.
    """
    path = keras_cache_path()
    return path if os.path.isfile(path) else None


def imagenet_weights_path() -> str:
    """The local path of the ImageNet weights, from the Keras cache or downloaded into it.

    Raises:
      WeightsNotAvailableError: not cached (or corrupt) and the download failed.
    """
    try:
        return keras.utils.get_file(
            IMAGENET_WEIGHTS_FILE,
            IMAGENET_WEIGHTS_URL,
            cache_subdir='models',
            file_hash=IMAGENET_WEIGHTS_MD5,
        )
    except Exception as e:  # Keras raises bare Exception for network failures.
        raise WeightsNotAvailableError(
            f'InceptionV3 ImageNet weights are not in the Keras cache ({keras_cache_path()}) '
            f'and could not be downloaded ({type(e).__name__}: {e}). On a machine with '
            f'internet access, download {IMAGENET_WEIGHTS_URL} (MD5 {IMAGENET_WEIGHTS_MD5}) '
            f'and either copy it to {keras_cache_path()} on this machine, or pass its path '
            "as weights='/path/to/" + IMAGENET_WEIGHTS_FILE + "' (gs:// works too). "
            "For an offline demo without ImageNet features, use weights='random'."
        ) from e


def _local_copy(path: str, directory: str) -> str:
    """`path` itself when local, else a copy of it inside `directory` (h5py reads local files only)."""
    if '://' not in path:
        return path
    local = os.path.join(directory, os.path.basename(path))
    tf.io.gfile.copy(path, local, overwrite=True)
    return local


def _inception_v3() -> keras.Model:
    return keras.applications.InceptionV3(
        include_top=False,
        weights=None,
        input_shape=(features.IMAGE_SIZE, features.IMAGE_SIZE, 3),
        pooling='avg',
    )


def _set_random_weights(model: keras.Model, seed: int) -> None:
    """Draws every convolution kernel He-uniform from NumPy's generator seeded with `seed`.

    Keras' own initialisers depend on TensorFlow's global random state, which
    differs between processes; NumPy's PCG64 stream does not. He-uniform (not
    Keras' Glorot default) keeps activations at unit scale through the 94
    convolutions, so features are O(1) rather than ~1e-4. Batch-norm keeps its
    deterministic defaults (beta 0, moving mean 0, moving variance 1).
    """
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if 'kernel' not in weight.name:
            continue
        fan_in = int(np.prod(weight.shape[:-1]))
        limit = np.sqrt(6.0 / fan_in)
        weight.assign(rng.uniform(-limit, limit, size=weight.shape).astype(np.float32))


def build_inception_encoder(
    weights: str = WEIGHTS_IMAGENET, seed: int = DEFAULT_SEED
) -> keras.Model:
    """Builds InceptionV3 (no top, average pooling) with the requested weights.

    Args:
      weights: 'imagenet', 'random', or the path of an HDF5 no-top weights file.
      seed: seed of 'random' weights; ignored otherwise.

    Returns:
      A Keras model float32 [None, 299, 299, 3] in [-1, 1] -> float32 [None, 2048].

    Raises:
      ValueError: a bad spec, or a weights file that does not fit InceptionV3 no-top.
      WeightsNotAvailableError: 'imagenet' weights can be neither found nor downloaded.
    """
    validate_weights(weights)
    if weights == WEIGHTS_RANDOM:
        model = _inception_v3()
        _set_random_weights(model, seed)
        logging.warning(
            '*** InceptionV3 encoder has RANDOM weights (seed %d): features are not ImageNet '
            'features. Fine for tests and offline demos; use weights=%r or a weights file '
            'for real captioning. ***',
            seed,
            WEIGHTS_IMAGENET,
        )
        return model
    with tempfile.TemporaryDirectory() as tmp:
        # The file is found (or its absence reported) before the slow model build.
        if weights == WEIGHTS_IMAGENET:
            path = imagenet_weights_path()
        else:
            path = weights if '://' in weights else os.path.expanduser(weights)
            if not tf.io.gfile.exists(path):
                raise ValueError(f'Weights file {weights!r} does not exist.')
            path = _local_copy(path, tmp)
            if not h5py.is_hdf5(path):
                raise ValueError(
                    f'Weights file {weights!r} is not HDF5; expected InceptionV3 no-top '
                    f'weights such as {IMAGENET_WEIGHTS_FILE}.'
                )
        model = _inception_v3()
        try:
            model.load_weights(path)
        except Exception as e:  # h5py and Keras raise many types for a wrong file.
            raise ValueError(
                f'Could not load {path!r} into InceptionV3(include_top=False): {e}. The file '
                f'must hold the no-top weights, such as {IMAGENET_WEIGHTS_FILE}.'
            ) from e
    logging.info('InceptionV3 encoder built with weights from %s.', path)
    return model


def make_encode_fn(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """A graph function float32 [None, 299, 299, 3] -> float32 [None, 2048] over `model`.

    Traced without AutoGraph: InceptionV3 has no data-dependent Python control
    flow, and AutoGraph-converting its ~300 layer calls takes 35-60 s on a
    2-core machine against ~2 s without. A bfloat16 model's features are cast
    to float32, so they are stored as float32 whatever the compute precision.
    """
    signature = tf.TensorSpec([None, features.IMAGE_SIZE, features.IMAGE_SIZE, 3], tf.float32)
    return tf.function(
        lambda images: tf.cast(model(images, training=False), tf.float32),
        input_signature=[signature],
        autograph=False,
    )


REGIONS_LAYER = 'mixed10'
"""InceptionV3's last block: the 8 x 8 x 2048 map whose average is the pooled vector."""


def regions_model(model: keras.Model) -> keras.Model:
    """`model` (InceptionV3 no-top, average pooling) with its last map as a second output.

    The same layers and weights: float32 [N, 299, 299, 3] -> (pooled [N,
    FEATURE_SIZE], regions [N, NUM_REGIONS, FEATURE_SIZE]), the regions in
    row-major grid order. The pooled vector is exactly the regions' mean.
    """
    grid = model.get_layer(REGIONS_LAYER).output
    regions = keras.layers.Reshape(
        (features.NUM_REGIONS, features.FEATURE_SIZE), name='regions', dtype=grid.dtype
    )(grid)
    return keras.Model(model.input, [model.output, regions], name=f'{model.name}_regions')


def make_encode_regions_fn(
    model: keras.Model,
) -> Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]:
    """As `make_encode_fn`, but -> (pooled float32 [None, FEATURE_SIZE], regions float32
    [None, NUM_REGIONS, FEATURE_SIZE]), from one InceptionV3 pass."""
    signature = tf.TensorSpec([None, features.IMAGE_SIZE, features.IMAGE_SIZE, 3], tf.float32)
    with_regions = regions_model(model)

    def encode(images):
        pooled, regions = with_regions(images, training=False)
        return tf.cast(pooled, tf.float32), tf.cast(regions, tf.float32)

    return tf.function(encode, input_signature=[signature], autograph=False)


def model_dir(path: str) -> str:
    """The directory holding the encoder files, given the artifact uri or that directory."""
    if tf.io.gfile.exists(os.path.join(path, SPEC_FILE)):
        return path
    return os.path.join(path, MODEL_DIR)


def weights_fingerprint(model: keras.Model) -> str:
    """SHA-256 over every weight's shape and float32 values, in the model's weight order."""
    digest = hashlib.sha256()
    for weight in model.weights:
        values = np.ascontiguousarray(weight.numpy(), dtype='<f4')
        digest.update(repr(values.shape).encode('ascii'))
        digest.update(values.tobytes())
    return digest.hexdigest()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def save_encoder(
    model: keras.Model,
    artifact_uri: str,
    weights: str,
    seed: int,
    requested_precision: str = PRECISION_FLOAT32,
    precision: str = PRECISION_FLOAT32,
) -> EncoderSpec:
    """Writes `model` into the encoder artifact layout under `artifact_uri`.

    Args:
      model: the float32 encoder, from `build_inception_encoder`.
      artifact_uri: the Model artifact's uri (local or remote).
      weights: the weights spec `model` was built from, recorded in the spec.
      seed: the seed it was built with, recorded in the spec.
      requested_precision: the extractor's requested compute precision, recorded.
      precision: the precision it resolved to, recorded; workers that load
        the artifact compute in it (`load_encoder` itself returns float32).

    Returns:
      The spec written beside the weights.

    Raises:
      ValueError: a precision that is not allowed, or 'auto' left unresolved.
    """
    validate_precision(requested_precision)
    if precision not in (PRECISION_FLOAT32, PRECISION_BFLOAT16):
        raise ValueError(
            f"precision must be resolved to 'float32' or 'bfloat16', got {precision!r}."
        )
    destination = os.path.join(artifact_uri, MODEL_DIR)
    tf.io.gfile.makedirs(destination)
    # h5py writes local files only: write locally, then copy to the artifact.
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, WEIGHTS_FILE)
        model.save_weights(local, save_format='h5')
        spec = EncoderSpec(
            weights=weights,
            seed=int(seed),
            weights_sha256=_sha256(local),
            weights_fingerprint=weights_fingerprint(model),
            requested_precision=requested_precision,
            precision=precision,
        )
        tf.io.gfile.copy(local, os.path.join(destination, WEIGHTS_FILE), overwrite=True)
    with tf.io.gfile.GFile(os.path.join(destination, SPEC_FILE), 'w') as f:
        f.write(spec.to_json())
    return spec


def read_encoder_spec(path: str) -> EncoderSpec:
    """The spec of the encoder artifact at `path` (artifact uri or its model directory)."""
    spec_path = os.path.join(model_dir(path), SPEC_FILE)
    if not tf.io.gfile.exists(spec_path):
        raise FileNotFoundError(
            f'No {SPEC_FILE} under {path!r}: not an ImageFeatureExtractor encoder artifact.'
        )
    with tf.io.gfile.GFile(spec_path, 'r') as f:
        return EncoderSpec.from_json(f.read())


def load_encoder(path: str) -> keras.Model:
    """Loads the encoder saved by `save_encoder`.

    Args:
      path: the encoder artifact's uri, or its ``Format-Serving`` directory
        (the Trainer's ``fn_args.base_model``).

    Returns:
      A Keras model with exactly the saved weights.

    Raises:
      FileNotFoundError: `path` holds no encoder.
      ValueError: the weights file does not match the spec's SHA-256, or the
        loaded weights do not match its fingerprint.
    """
    spec = read_encoder_spec(path)
    directory = model_dir(path)
    with tempfile.TemporaryDirectory() as tmp:
        local = _local_copy(os.path.join(directory, WEIGHTS_FILE), tmp)
        digest = _sha256(local)
        if digest != spec.weights_sha256:
            raise ValueError(
                f'{WEIGHTS_FILE} under {directory!r} has SHA-256 {digest}, but its spec records '
                f'{spec.weights_sha256}: the artifact is corrupt or was modified.'
            )
        model = _inception_v3()
        model.load_weights(local)
    if weights_fingerprint(model) != spec.weights_fingerprint:
        raise ValueError(
            f'The weights loaded from {directory!r} differ from the ones saved there: '
            'the file does not fit this InceptionV3 architecture.'
        )
    logging.info('Loaded InceptionV3 encoder (weights %r) from %s.', spec.weights, directory)
    return model
