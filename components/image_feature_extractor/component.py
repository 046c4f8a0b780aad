"""ImageFeatureExtractor: a BaseBeamComponent computing InceptionV3 features per image.

Thin by design: it checks its arguments when the pipeline is built (so a typo
fails at `create_pipeline`, not an hour into a run) and declares the channels;
`executor` does the work.
"""

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts

from tfx_captioning.components import code_fingerprint
from tfx_captioning.components.image_feature_extractor import executor, spec
from tfx_captioning.models import features


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
            examples=example_gen.outputs['examples'],
            parameters=ExtractorParameters(weights='imagenet'))
        trainer = Trainer(..., base_model=extractor.outputs['encoder'])
    """

    SPEC_CLASS = spec.ImageFeatureExtractorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(
        self,
        examples: types.BaseChannel,
        parameters: Optional[spec.ExtractorParameters] = None,
    ):
        """Args:
          examples: Examples with `features.IMAGE_ID_KEY`, `features.IMAGE_KEY`
            and `features.CAPTIONS_KEY` (Flickr8kExampleGen's output).
          parameters: weights ('imagenet', 'random' or an HDF5 file), seed,
            batch size, whether to keep image bytes, the pixel limit;
            `spec.ExtractorParameters()` by default.

        Raises:
          ValueError: a parameter is invalid.
        """
        parameters = (parameters or spec.ExtractorParameters()).validate()
        component_spec = spec.ImageFeatureExtractorSpec(
            examples=examples,
            feature_examples=types.Channel(type=standard_artifacts.Examples),
            encoder=types.Channel(type=standard_artifacts.Model),
            **parameters.to_exec_properties(),
            **{features.CODE_FINGERPRINT_KEY: code_fingerprint.fingerprint(executor.__name__)},
        )
        super().__init__(spec=component_spec)
