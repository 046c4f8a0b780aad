"""Driver of Flickr8kExampleGen: an input fingerprint that covers every file the executor reads.

TFX's `FileBasedDriver` fingerprints the files the split patterns name (here
the three split files: their sizes and modification times to the second) and
puts that fingerprint into the exec properties, hence into the cache key. The
executor also reads `Flickr8k.token.txt` and the images, so this driver adds:

- a SHA-256 of the token file's and the split files' contents (small text
  files: an edited caption is seen even within the same second and length);
- over the image directory, the number of files, their total size and a
  digest of every file's name, size and modification time in nanoseconds
  (an added, removed, replaced or touched image is seen without reading 1 GB).

So a caption or image edit re-runs the ExampleGen and, through its new output
artifact, everything downstream. Kubeflow does not run custom drivers for a
`FileBasedExampleGen` (it runs TFX's own driver container), so there the
fingerprint stays TFX's.
"""

import hashlib
import os
from typing import Any, Dict, Iterable, Tuple

from tfx.components.example_gen import driver, utils
from tfx.dsl.io import fileio
from tfx.orchestration import data_types
from tfx.types import standard_component_specs

from tfx_captioning.components.flickr8k_example_gen import executor, layout

_DIGEST_CHARS = 16
_CHUNK_BYTES = 1 << 20


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with fileio.open(path, 'rb') as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()[:_DIGEST_CHARS]


def text_files_fingerprint(input_base: str, names: Iterable[str]) -> str:
    """`name:sha256=...` per text file (or `name:missing`), one per line, sorted by name."""
    lines = []
    for name in sorted(set(names)):
        path = os.path.join(input_base, name)
        lines.append(
            f'{name}:sha256={_file_digest(path)}' if fileio.exists(path) else f'{name}:missing'
        )
    return '\n'.join(lines)


def _size_and_mtime_ns(path: str) -> Tuple[int, int]:
    # TensorFlow's local filesystem reports whole seconds: ask the OS for nanoseconds.
    if '://' not in path:
        stat = os.stat(path)
        return stat.st_size, stat.st_mtime_ns
    stat = fileio.stat(path)
    return stat.length, stat.mtime_nsec


def images_fingerprint(input_base: str) -> str:
    """Count, total size and a digest of (name, size, mtime in ns) of every image file."""
    digest = hashlib.sha256()
    total_bytes = 0
    paths = sorted(fileio.glob(os.path.join(input_base, layout.IMAGES_DIR, '*')))
    for path in paths:
        size, mtime_ns = _size_and_mtime_ns(path)
        total_bytes += size
        digest.update(f'{os.path.basename(path)}\0{size}\0{mtime_ns}\n'.encode())
    return (
        f'images:num_files={len(paths)},total_bytes={total_bytes},'
        f'stats_sha256={digest.hexdigest()[:_DIGEST_CHARS]}'
    )


def data_fingerprint(input_base: str, split_files: Iterable[str]) -> str:
    """What `Flickr8kDriver` adds to TFX's input fingerprint (no absolute path in it)."""
    return '\n'.join(
        [
            text_files_fingerprint(input_base, [layout.TOKEN_FILE, *split_files]),
            images_fingerprint(input_base),
        ]
    )


class Flickr8kDriver(driver.FileBasedDriver):
    """TFX's FileBasedDriver, whose fingerprint also covers the token file and the images."""

    def resolve_exec_properties(
        self,
        exec_properties: Dict[str, Any],
        pipeline_info: data_types.PipelineInfo,
        component_info: data_types.ComponentInfo,
    ) -> Dict[str, Any]:
        exec_properties = super().resolve_exec_properties(
            exec_properties, pipeline_info, component_info
        )
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        split_files = executor.split_files_from_config(
            exec_properties[standard_component_specs.INPUT_CONFIG_KEY]
        ).values()
        exec_properties[utils.FINGERPRINT_PROPERTY_NAME] = '\n'.join(
            [
                exec_properties[utils.FINGERPRINT_PROPERTY_NAME],
                data_fingerprint(input_base, split_files),
            ]
        )
        return exec_properties
