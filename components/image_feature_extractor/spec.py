"""ImageFeatureExtractor's interface: channel and parameter keys, typed parameters.

Input ``examples`` (Examples from Flickr8kExampleGen); outputs
``feature_examples`` (Examples with the InceptionV3 features) and ``encoder``
(the exact encoder used, a standard Model artifact; layout in `models.encoder`).
TFX forbids one name for an input and an output, hence ``feature_examples``.
"""

import dataclasses

from tfx import types
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from tfx_captioning.models import encoder, features

# Channels.
EXAMPLES_KEY = 'examples'
FEATURE_EXAMPLES_KEY = 'feature_examples'
ENCODER_KEY = 'encoder'

# Execution parameters.
WEIGHTS_KEY = 'weights'
SEED_KEY = 'seed'
BATCH_SIZE_KEY = 'batch_size'
KEEP_IMAGE_BYTES_KEY = 'keep_image_bytes'
MAX_IMAGE_PIXELS_KEY = 'max_image_pixels'
ENCODER_PRECISION_KEY = 'encoder_precision'
REGION_FEATURES_KEY = 'region_features'

DEFAULT_BATCH_SIZE = 16
"""Images per InceptionV3 call. On the 2-core development machine batches of 8
and 16 ran fastest (32 and 64 about 20 % slower); a batch's pixels take 1 MB
per image."""
MAX_BATCH_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class ExtractorParameters:
    """The extractor's execution parameters, checked in one place.

    Attributes:
      weights: 'imagenet', 'random', or the path of an HDF5 InceptionV3 no-top
        weights file (see `models.encoder`).
      seed: seed of 'random' weights.
      batch_size: images per InceptionV3 call.
      keep_image_bytes: also copy the encoded image into the output examples.
      max_image_pixels: images whose header declares more pixels are skipped.
      encoder_precision: InceptionV3's compute precision: 'float32',
        'bfloat16', or 'auto' (bfloat16 only where the CPU running the
        extractor has AVX512-BF16 or AMX; see `models.encoder`). Features
        are stored as float32 either way, and the served model stays float32.
      region_features: also keep InceptionV3's last 8 x 8 x 2048 map (the 64
        regions the attention decoder attends over) as float16,
        `features.IMAGE_REGIONS_KEY`: 256 KiB per image. On by default, so
        that switching decoders (a Trainer hyperparameter) never recomputes
        features; turn it off to save the space when only the init-inject
        decoder will run.
    """

    weights: str = encoder.WEIGHTS_IMAGENET
    seed: int = encoder.DEFAULT_SEED
    batch_size: int = DEFAULT_BATCH_SIZE
    keep_image_bytes: bool = False
    max_image_pixels: int = features.MAX_IMAGE_PIXELS
    encoder_precision: str = encoder.PRECISION_FLOAT32
    region_features: bool = True

    def validate(self) -> 'ExtractorParameters':
        """Returns self.

        Raises:
          ValueError: a parameter is out of range, naming it and what is allowed.
        """
        encoder.validate_weights(self.weights)
        encoder.validate_precision(self.encoder_precision)
        for name in ('seed', 'batch_size', 'max_image_pixels'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f'{name} must be an int, got {value!r}.')
        if self.seed < 0:
            raise ValueError(f'seed must be >= 0, got {self.seed}.')
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f'batch_size must be in [1, {MAX_BATCH_SIZE}], got {self.batch_size}.')
        if self.max_image_pixels < 1:
            raise ValueError(f'max_image_pixels must be >= 1, got {self.max_image_pixels}.')
        for name in ('keep_image_bytes', 'region_features'):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f'{name} must be a bool, got {getattr(self, name)!r}.')
        return self

    def to_exec_properties(self) -> dict:
        return {
            WEIGHTS_KEY: self.weights,
            SEED_KEY: self.seed,
            BATCH_SIZE_KEY: self.batch_size,
            KEEP_IMAGE_BYTES_KEY: self.keep_image_bytes,
            MAX_IMAGE_PIXELS_KEY: self.max_image_pixels,
            ENCODER_PRECISION_KEY: self.encoder_precision,
            REGION_FEATURES_KEY: self.region_features,
        }

    @classmethod
    def from_exec_properties(cls, exec_properties: dict) -> 'ExtractorParameters':
        """Reads and validates the parameters an executor receives.

        Orchestrators may hand a bool back as an int, so it is converted here.
        """
        defaults = cls()
        return cls(
            weights=exec_properties.get(WEIGHTS_KEY, defaults.weights),
            seed=int(exec_properties.get(SEED_KEY, defaults.seed)),
            batch_size=int(exec_properties.get(BATCH_SIZE_KEY, defaults.batch_size)),
            keep_image_bytes=bool(
                exec_properties.get(KEEP_IMAGE_BYTES_KEY, defaults.keep_image_bytes)
            ),
            max_image_pixels=int(
                exec_properties.get(MAX_IMAGE_PIXELS_KEY, defaults.max_image_pixels)
            ),
            encoder_precision=exec_properties.get(
                ENCODER_PRECISION_KEY, defaults.encoder_precision
            ),
            region_features=bool(
                exec_properties.get(REGION_FEATURES_KEY, defaults.region_features)
            ),
        ).validate()


class ImageFeatureExtractorSpec(types.ComponentSpec):
    """Inputs, outputs and parameters of ImageFeatureExtractor."""

    PARAMETERS = {
        WEIGHTS_KEY: ExecutionParameter(type=str),
        SEED_KEY: ExecutionParameter(type=int),
        BATCH_SIZE_KEY: ExecutionParameter(type=int),
        KEEP_IMAGE_BYTES_KEY: ExecutionParameter(type=bool),
        MAX_IMAGE_PIXELS_KEY: ExecutionParameter(type=int),
        # Set by the component: its executor's code, for TFX's cache key.
        features.CODE_FINGERPRINT_KEY: ExecutionParameter(type=str, optional=True),
        ENCODER_PRECISION_KEY: ExecutionParameter(type=str),
        REGION_FEATURES_KEY: ExecutionParameter(type=bool),
    }
    INPUTS = {
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {
        FEATURE_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        ENCODER_KEY: ChannelParameter(type=standard_artifacts.Model),
    }
