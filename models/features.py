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
"""InceptionV3 input height and width in pixels."""

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
