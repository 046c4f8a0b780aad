"""ImageFeatureExtractor: a BaseBeamComponent computing InceptionV3 features per image.

Thin by design: it checks its arguments when the pipeline is built (so a typo
fails at `create_pipeline`, not an hour into a run) and declares the channels;
`executor` does the work.
"""

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts

from tfx_captioning.components.image_feature_extractor import executor, spec
from tfx_captioning.models import encoder, image_preprocessing


class ImageFeatureExtractor(base_beam_component.BaseBeamComponent):
    """Reads ExampleGen Examples and writes Examples with InceptionV3 features.

    Output ``feature_examples`` keeps the input's split names; each example has
    `features.IMAGE_ID_KEY`, `features.IMAGE_FEATURES_KEY` (float[2048]),
    `features.CAPTIONS_KEY` and, only with ``keep_image_bytes``,
    `features.IMAGE_KEY`. Images that cannot be used are skipped and counted on
    the artifact. Output ``encoder`` holds the exact encoder, for the Trainer's
    ``base_model``.

    Example::

        extractor = ImageFeatureExtractor(
            examples=example_gen.outputs['examples'], weights='imagenet')
        trainer = Trainer(..., base_model=extractor.outputs['encoder'])
    """

    SPEC_CLASS = spec.ImageFeatureExtractorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(
        self,
        examples: types.BaseChannel,
        weights: str = encoder.WEIGHTS_IMAGENET,
        seed: int = encoder.DEFAULT_SEED,
        batch_size: int = spec.DEFAULT_BATCH_SIZE,
        keep_image_bytes: bool = False,
        max_image_pixels: int = image_preprocessing.MAX_IMAGE_PIXELS,
    ):
        """Args:
          examples: Examples with `features.IMAGE_ID_KEY`, `features.IMAGE_KEY`
            and `features.CAPTIONS_KEY` (Flickr8kExampleGen's output).
          weights: 'imagenet' (Keras cache, ~/.keras/models), 'random' (seeded,
            demos and tests only), or the path of an HDF5 no-top weights file.
          seed: seed of 'random' weights.
          batch_size: images per InceptionV3 call, 1 to 1024.
          keep_image_bytes: also copy the encoded image to the output examples.
          max_image_pixels: skip images whose header declares more pixels.

        Raises:
          ValueError: a parameter is invalid.
        """
        parameters = spec.ExtractorParameters(
            weights=weights,
            seed=seed,
            batch_size=batch_size,
            keep_image_bytes=keep_image_bytes,
            max_image_pixels=max_image_pixels,
        ).validate()
        component_spec = spec.ImageFeatureExtractorSpec(
            examples=examples,
            feature_examples=types.Channel(type=standard_artifacts.Examples),
            encoder=types.Channel(type=standard_artifacts.Model),
            **parameters.as_exec_properties(),
        )
        super().__init__(spec=component_spec)
