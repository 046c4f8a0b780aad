"""Hyperparameters of Transform and the decoder, in one frozen, validated object.

The pipeline builds an `HParams`, passes `transform_config()` to Transform and
`to_custom_config()` to the Trainer; `run_fn` and `preprocessing_fn` rebuild it
with `from_custom_config`. Only the two fields Transform uses go to Transform,
so changing, say, the number of epochs keeps Transform's cached outputs.
"""

import dataclasses
from typing import Any, Dict, Mapping, Tuple

from tfx_captioning.models import features

TFLITE_QUANTIZATIONS = ('auto', 'dynamic', 'float16', 'float32', 'none')


@dataclasses.dataclass(frozen=True)
class HParams:
    """Sizes and training settings of the captioning model.

    Attributes:
      embedding_dim: size of the word embedding (`Embedding(vocab, embedding_dim)`).
      units: size of each GRU layer, and of the `Dense(units, tanh)` that maps the
        image features to the GRUs' initial state.
      num_layers: number of stacked GRU layers.
      learning_rate: RMSprop learning rate.
      batch_size: (image, caption) pairs per training step.
      epochs: maximum number of epochs; early stopping may end sooner.
      patience: epochs without a lower eval loss before training stops.
      max_len: tokens a caption may have after `<start>`, `<end>` included;
        Transform pads or truncates to ``max_len + 1`` ids, and the exported
        model emits at most ``max_len`` tokens.
      min_word_count: a word enters the vocabulary when seen this many times
        in the training captions; rarer words become `<unk>`.
      shuffle_buffer: (image, caption) pairs in the training shuffle buffer.
      seed: seed of weight initialisation and shuffling.
      tflite_quantization: the TFLite variants the Trainer converts: 'auto'
        (default: dynamic-range, float16 and float32, of which the Pusher
        ships the smallest that agrees with the SavedModel), one of
        'dynamic', 'float16', 'float32' (only that one, still gated), or
        'none' to skip TFLite.
      beam_width: hypotheses kept per image by the beam search of the
        `caption_beam` signatures (SavedModel and TFLite); 1 gives the greedy
        captions. Show and Tell's im2txt decodes with 3.
      decoder: 'init_inject' (the seed tutorial's: the pooled image features
        become the GRUs' initial state, and that is all the decoder sees of
        the image) or 'attention' (Show, Attend and Tell's soft attention:
        the same initial state, and at every word the top GRU's state
        attends over the 8 x 8 InceptionV3 regions; the context vector feeds
        the next step and the output). 'attention' needs the extractor's
        region features.
      attention_units: size of the attention MLP (attention only).
      beam_length_alpha: the alpha of GNMT's length normalisation (Wu et al.
        2016, arXiv:1609.08144, section 7): hypotheses are ranked by
        ``log P(Y) / ((5 + |Y|) / 6) ** alpha``, ``|Y|`` counting ``<end>``.
        0 ranks by the raw log-probability (which favours short captions);
        0.6 is the value the Transformer paper decodes with, using GNMT's
        formula (Vaswani et al. 2017, arXiv:1706.03762, section 6.1).
    """

    embedding_dim: int = 256
    units: int = 512
    num_layers: int = 3
    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 10
    patience: int = 2
    max_len: int = features.MAX_LEN
    min_word_count: int = features.MIN_WORD_COUNT
    shuffle_buffer: int = 10_000
    seed: int = 0
    tflite_quantization: str = 'auto'
    beam_width: int = 3
    beam_length_alpha: float = 0.6
    decoder: str = features.DECODER_INIT_INJECT
    attention_units: int = 256

    def validate(self) -> 'HParams':
        """Checks every field; returns self so calls can chain.

        Raises:
          ValueError: naming each field that is out of range.
        """
        problems = []
        for name in (
            'embedding_dim',
            'units',
            'num_layers',
            'batch_size',
            'epochs',
            'beam_width',
            'attention_units',
        ):
            if getattr(self, name) < 1:
                problems.append(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('patience', 'shuffle_buffer', 'seed'):
            if getattr(self, name) < 0:
                problems.append(f'{name} must be >= 0, got {getattr(self, name)}')
        if not self.learning_rate > 0:
            problems.append(f'learning_rate must be > 0, got {self.learning_rate}')
        if not self.beam_length_alpha >= 0:
            problems.append(f'beam_length_alpha must be >= 0, got {self.beam_length_alpha}')
        if self.max_len < 2:
            problems.append(f'max_len must be >= 2 (one word and <end>), got {self.max_len}')
        if self.min_word_count < 1:
            problems.append(f'min_word_count must be >= 1, got {self.min_word_count}')
        if self.tflite_quantization not in TFLITE_QUANTIZATIONS:
            problems.append(
                f'tflite_quantization must be one of {TFLITE_QUANTIZATIONS}, '
                f'got {self.tflite_quantization!r}'
            )
        if self.decoder not in features.DECODERS:
            problems.append(f'decoder must be one of {features.DECODERS}, got {self.decoder!r}')
        if problems:
            raise ValueError('Invalid hyperparameters: ' + '; '.join(problems) + '.')
        return self

    @classmethod
    def from_custom_config(cls, custom_config: Mapping[str, Any]) -> 'HParams':
        """Builds and validates hyperparameters from a component's ``custom_config``.

        Missing fields keep their defaults; values are converted to the field's
        type (custom_config travels as JSON, so ints may arrive as floats).
        `features.CODE_FINGERPRINT_KEY`, which the pipeline adds for TFX's
        cache key, is not a hyperparameter and is skipped.

        Raises:
          ValueError: an unknown key (likely a typo) or an invalid value.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        custom_config = {
            k: v for k, v in custom_config.items() if k != features.CODE_FINGERPRINT_KEY
        }
        unknown = sorted(set(custom_config) - set(fields))
        if unknown:
            raise ValueError(f'Unknown hyperparameters {unknown}; known: {sorted(fields)}.')
        values = {}
        for name, value in custom_config.items():
            field_type = type(getattr(cls(), name))
            if field_type is int and float(value) != int(value):
                raise ValueError(f'{name} must be an integer, got {value!r}.')
            values[name] = field_type(value)
        return cls(**values).validate()

    @property
    def attention(self) -> bool:
        """Whether the decoder attends over region features."""
        return self.decoder == features.DECODER_ATTENTION

    @property
    def tflite_variants(self) -> Tuple[str, ...]:
        """The TFLite quantisations to convert, smallest file first."""
        if self.tflite_quantization == 'auto':
            return ('dynamic', 'float16', 'float32')
        if self.tflite_quantization == 'none':
            return ()
        return (self.tflite_quantization,)

    def to_custom_config(self) -> Dict[str, Any]:
        """Every field, for the Trainer's ``custom_config``."""
        return dataclasses.asdict(self)

    def transform_config(self) -> Dict[str, Any]:
        """The fields Transform uses, for Transform's ``custom_config``."""
        return {
            features.MAX_LEN_CONFIG: self.max_len,
            features.MIN_WORD_COUNT_CONFIG: self.min_word_count,
        }
