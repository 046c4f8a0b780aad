"""The part of a TensorFlow runtime error a person can use, without TensorFlow.

TF prefixes graph errors with node names, stack-trace placeholders and op
names that mean nothing to a client or a command-line user; the local server
and `caption-pipeline caption` both answer with what is left ("Invalid JPEG
data, size 225").
"""

import re

_TF_NOISE_LINE = re.compile(
    r'^(Graph execution error:|Detected at node|<stack traces unavailable>|\s*\[\[|\s*$)'
)
_TF_OP_SUFFIX = re.compile(r'\s*\[Op:[^\]]*\]\s*$')


def clean_tf_error_message(message: str) -> str:
    """Keeps the human part of a TF runtime error ('Unknown image file format...')."""
    lines = [line for line in message.splitlines() if not _TF_NOISE_LINE.match(line)]
    text = ' '.join(line.strip() for line in lines) or message.strip()
    return _TF_OP_SUFFIX.sub('', text)
