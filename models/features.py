"""Names and contracts shared by every stage of the captioning pipeline.

ExampleGen, the feature extractor, Transform, Trainer, serving and the tests all
import these constants; no other module spells a feature key, split name or
special token as a string literal.
"""

# --- Raw examples written by Flickr8kExampleGen -------------------------------
IMAGE_ID_KEY = 'image_id'
"""bytes[1]: the Flickr8k file name, e.g. ``1000268201_693b08cb0e.jpg``."""

IMAGE_KEY = 'image_raw'
"""bytes[1]: the encoded image file exactly as it is on disk."""

CAPTIONS_KEY = 'captions'
"""bytes[n]: every reference caption of the image (five for Flickr8k), UTF-8."""

# --- Examples written by ImageFeatureExtractor ---------------------------------
IMAGE_FEATURES_KEY = 'image_features'
"""float[FEATURE_SIZE]: InceptionV3 global-average-pooled embedding."""

FEATURE_SIZE = 2048
IMAGE_SIZE = 299

IMAGE_REGIONS_KEY = 'image_regions'
"""bytes[1]: InceptionV3's last feature map (``mixed10``, the map `IMAGE_FEATURES_KEY`
averages), `NUM_REGIONS` x `FEATURE_SIZE` values in `REGION_DTYPE`, little-endian, region
by region (row-major over the `REGION_GRID` x `REGION_GRID` grid), channels last."""
REGION_GRID = 8
"""InceptionV3's last map is 8 x 8 regions for a 299 x 299 input."""
NUM_REGIONS = REGION_GRID * REGION_GRID
REGION_DTYPE = 'float16'
"""How the extractor stores region features: 256 KiB per image (float32 would be 512 KiB);
their relative rounding error, 2**-11, is far below the features' own spread."""
"""InceptionV3 input height and width in pixels."""

# --- Encoded images every runtime accepts (models/image_files.py checks them) ----------
IMAGE_FORMATS = ('JPEG', 'PNG', 'GIF', 'BMP')
"""The formats `tf.io.decode_image` decodes: the SavedModel's graph, the local
server, the TFLite runner and the ExampleGen all accept exactly these (a GIF
by its first frame)."""
IMAGE_FILE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')
"""File name endings (any case) the caption commands pick up in a directory."""
MAX_IMAGE_PIXELS = 40_000_000
"""Largest width x height any runtime accepts, read from the header before decoding.

40 megapixels, far above any Flickr photo (about 0.2 MP). At the limit,
decoding takes 120 MB as uint8 and 480 MB as float32 before the resize, which
one serving replica can afford; a 20000x20000 "decompression bomb" (400 MP)
is refused before anything allocates its pixels.
"""

# --- Splits --------------------------------------------------------------------
TRAIN_SPLIT = 'train'
EVAL_SPLIT = 'eval'
TEST_SPLIT = 'test'
SPLITS = (TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT)

# --- Vocabulary ------------------------------------------------------------------
PAD_TOKEN = '<pad>'
UNK_TOKEN = '<unk>'
START_TOKEN = '<start>'
END_TOKEN = '<end>'
RESERVED_TOKENS = (PAD_TOKEN, UNK_TOKEN, START_TOKEN, END_TOKEN)
"""Reserved tokens in id order: ``<pad>`` is id 0."""

MAX_LEN = 20
"""Default number of tokens a caption may have after ``<start>`` (``<end>`` included)."""

# --- Where a local run writes its pushed models --------------------------------------
MODEL_NAME = 'captioner'
"""The name TF Serving serves the model under, and the folder of its versions."""
DEFAULT_OUTPUT_ROOT = 'build'
"""Everything a local run writes lives under this directory."""
SERVING_SUBDIR = 'serving'
"""`<output root>/serving/<MODEL_NAME>/<version>/`: the Pusher's TF Serving layout."""
TFLITE_SUBDIR = 'tflite'
"""`<output root>/tflite/<MODEL_NAME>/<version>/`: the Pusher's TFLite layout."""
DEFAULT_MODEL_BASE_PATH = f'{DEFAULT_OUTPUT_ROOT}/{SERVING_SUBDIR}/{MODEL_NAME}'
"""TF Serving's `--model_base_path` for a local run's pushed versions."""

# --- Exported model (TF Serving) ---------------------------------------------------
SERVING_SIGNATURE = 'serving_default'
FEATURES_SIGNATURE = 'caption_from_features'
IMAGE_BYTES_INPUT = 'image_bytes'
"""string[None]: encoded images, the input of `SERVING_SIGNATURE`."""
IMAGE_FEATURES_INPUT = 'image_features'
"""float32[None, FEATURE_SIZE]: raw extractor features, input of `FEATURES_SIGNATURE`."""
IMAGE_REGIONS_INPUT = 'image_regions'
"""float32[None, NUM_REGIONS, FEATURE_SIZE]: raw region features, the second input of the
features signatures of an attention model (`DECODER_ATTENTION`)."""
CAPTION_OUTPUT = 'caption'
"""string[None]: the decoded caption, words joined by spaces, no special tokens."""
TOKEN_IDS_OUTPUT = 'token_ids'
"""int32[None, max_len]: generated ids, `<end>` included, then `<pad>`."""
LENGTH_OUTPUT = 'length'
"""int32[None]: number of words in `caption` (without `<end>`)."""
BEAM_SIGNATURE = 'caption_beam'
"""`IMAGE_BYTES_INPUT` -> the outputs of `SERVING_SIGNATURE` plus `LOG_PROB_OUTPUT`, decoded
by an in-graph beam search (width and length normalisation fixed at export, see
`DECODING_FILE`)."""
BEAM_FEATURES_SIGNATURE = 'caption_beam_from_features'
"""`IMAGE_FEATURES_INPUT` (as `FEATURES_SIGNATURE`) -> the outputs of `BEAM_SIGNATURE`."""
LOG_PROB_OUTPUT = 'log_prob'
"""float32[None]: summed natural-log probability of the chosen sequence, `<end>` included
(not length-normalised)."""
ATTENTION_SIGNATURE = 'caption_attention'
"""Attention models only: `IMAGE_BYTES_INPUT` -> the outputs of `SERVING_SIGNATURE` (greedy)
plus `ATTENTION_OUTPUT`."""
ATTENTION_OUTPUT = 'attention'
"""float32[None, max_len, NUM_REGIONS]: per generated token, its attention weights over the
regions (summing to 1; zeros after `<end>`)."""
DECODER_INIT_INJECT = 'init_inject'
"""The seed tutorial's decoder: the pooled features become the GRUs' initial state."""
DECODER_ATTENTION = 'attention'
"""Show, Attend and Tell's soft attention over the regions at every word, on top of the same
initial state."""
DECODERS = (DECODER_INIT_INJECT, DECODER_ATTENTION)
DECODING_FILE = 'decoding.json'
"""The decoding settings fixed at export (greedy and beam: width, length normalisation and
its reference), as JSON: in a SavedModel's `WARMUP_REQUESTS_DIR` (``assets.extra/``, which
TF Serving copies but never reads), and beside `TFLITE_FILE`."""

# --- Vocabulary ids and caption normalisation (Transform) ------------------------
PAD_ID, UNK_ID, START_ID, END_ID = range(len(RESERVED_TOKENS))
"""Ids of the reserved tokens: they open the vocabulary in `RESERVED_TOKENS` order."""

VOCAB_NAME = 'caption_vocabulary'
"""Transform's vocabulary file name: `tft.TFTransformOutput.vocabulary_file_by_name(VOCAB_NAME)`."""

MIN_WORD_COUNT = 5
"""Default minimum number of occurrences for a word to enter the vocabulary."""

CAPTION_FILTER_CHARS = '!"#$%&()*+.,-/:;=?@[\\]^_`{|}~\t\n' + '<>'
"""Characters replaced by a space before splitting a caption into words.

The seed tutorial's (docs/architecture.md) Keras `Tokenizer` filters, plus ``<`` and ``>`` so that no
caption can spell a reserved token (the seed tutorial kept them only because it
wrote ``<start>``/``<end>`` into the caption text; we add those by id).
"""

# --- Transform outputs (Transform -> Trainer) ----------------------------------------


def transformed_name(key: str) -> str:
    """The name of a transformed feature that would otherwise clash with its raw key."""
    return key + '_xf'


NORMALIZED_FEATURES_KEY = transformed_name(IMAGE_FEATURES_KEY)
"""float32[FEATURE_SIZE]: image features z-scored per dimension over the training split."""

NORMALIZED_REGIONS_KEY = transformed_name(IMAGE_REGIONS_KEY)
"""float32[NUM_REGIONS * FEATURE_SIZE]: region features z-scored per channel (one mean and
variance per channel over every region of every training image); only when the extractor
kept regions."""

CAPTION_IDS_KEY = 'caption_ids'
"""int64[n_captions, max_len + 1] (first dimension ragged): `<start>` words `<end>` `<pad>`..."""

# --- Transform / Trainer custom_config keys (fields of `models.hparams.HParams`) -----
MAX_LEN_CONFIG = 'max_len'
MIN_WORD_COUNT_CONFIG = 'min_word_count'

# --- Caching ------------------------------------------------------------------------
CODE_FINGERPRINT_KEY = 'code_fingerprint'
"""Exec property (or `custom_config` key) holding a digest of the project code a
component runs (`components.code_fingerprint`), so TFX's cache key changes when
that code does. Not a hyperparameter: `HParams.from_custom_config` skips it."""

# --- Decoder model (Trainer) ------------------------------------------------------------
DECODER_INPUT_KEY = 'decoder_input'
"""int[None]: the teacher-forced input ids of the training model (a caption without its last id)."""

# --- TF Serving version directory ---------------------------------------------------
WARMUP_REQUESTS_DIR = 'assets.extra'
"""Directory inside a SavedModel version directory that TF Serving reads warmup requests from."""
WARMUP_REQUESTS_FILE = 'tf_serving_warmup_requests'
"""TFRecord of `PredictionLog`s, in `WARMUP_REQUESTS_DIR`, replayed when a version is loaded."""

# --- Model artifact layout, evaluation and push ---------------------------------------
TFLITE_MODEL_DIR = 'Format-TFLite'
"""Folder of the Trainer's Model artifact holding model.tflite and vocab.txt."""
BLESSING_REASON_PROPERTY = 'blessing_reason'
"""string custom property of ModelBlessing: why the model was (not) blessed."""
TFLITE_CANDIDATES_PROPERTY = 'tflite_candidates'
"""JSON string custom property of ModelBlessing: per TFLite variant, its 'variant',
'size_bytes', 'latency_ms' (one image) and 'agreement' (share of eval images
captioned exactly as the SavedModel does)."""
LOSS_SIGNATURE = 'caption_loss'
"""Evaluation signature: NORMALIZED_FEATURES_KEY float32[None, FEATURE_SIZE] (and, for an
attention model, NORMALIZED_REGIONS_KEY float32[None, NUM_REGIONS * FEATURE_SIZE]) and
CAPTION_IDS_KEY int64[None, max_len + 1] (as Transform writes them, one caption
per row) -> LOSS_OUTPUT and TOKENS_OUTPUT."""
LOSS_OUTPUT = 'loss_sum'
"""float32[None]: summed masked cross-entropy (nats) of each caption under teacher forcing."""
TOKENS_OUTPUT = 'token_count'
"""int32[None]: number of real (non-<pad>) target tokens of each caption."""

# --- TFLite variant ---------------------------------------------------------------
TFLITE_FILE = 'model.tflite'
TFLITE_VOCAB_FILE = 'vocab.txt'
"""One word per line, line i = id i (reserved tokens first), beside TFLITE_FILE."""
TFLITE_SIGNATURE = 'serving_default'
TFLITE_IMAGE_INPUT = 'image'
"""float32[1, IMAGE_SIZE, IMAGE_SIZE, 3]: RGB resized to 299x299 and scaled to [-1, 1]."""
TFLITE_TOKEN_IDS_OUTPUT = 'token_ids'
"""int32[1, max_len]: generated ids, `<end>` included, then `<pad>`."""
TFLITE_BEAM_SIGNATURE = 'caption_beam'
"""`TFLITE_IMAGE_INPUT` -> `TFLITE_TOKEN_IDS_OUTPUT` and `TFLITE_LOG_PROB_OUTPUT`, beam search."""
TFLITE_LOG_PROB_OUTPUT = 'log_prob'
"""float32[1]: summed log-probability of the beam search's chosen sequence."""

# --- The captioning field's metrics (coco-caption toolkit, models/caption_metrics.py) ----
METRIC_NAMES = ('BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr-D')
"""Keys of `caption_metrics.CaptionScorer.score`, as captioning papers name them."""
