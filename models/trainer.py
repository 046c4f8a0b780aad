"""The Trainer module: trains the GRU decoder on Transform's output and exports the combined model.

`run_fn` (referenced as ``tfx_captioning.models.trainer.run_fn``) reads the transformed
examples, turns every caption of every image into one teacher-forcing pair
(five pairs per Flickr8k image, shuffled), trains `decoder.build_decoder` with
a cross-entropy masked on ``<pad>``, stops early on the eval loss, keeps the
best weights, and writes ONE SavedModel (`export.export_serving_model`) holding
InceptionV3, the feature normalisation, the decoder and the vocabulary.

Hyperparameters come from the Trainer's ``custom_config``
(`hparams.HParams.from_custom_config`); ``train_args.num_steps`` (optional) is
the total number of training steps, spread over ``epochs``.
"""

import ctypes
import gc
import logging
import math
import os
from typing import List, Optional, Tuple

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from tfx_captioning.models import decoder, export, features, tflite_export
from tfx_captioning.models.hparams import HParams

# Examples parsed per `tf.io.parse_example` call before they are split into pairs.
_PARSE_BATCH = 128


def masked_loss(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean sparse cross-entropy over the tokens that are not ``<pad>``.

    The seed tutorial (docs/architecture.md) averaged over padding too, so most of its loss was the easy
    task of predicting ``<pad>`` after ``<end>``.

    Args:
      y_true: int [batch, time] target ids.
      logits: float32 [batch, time, vocab].

    Returns:
      A float32 scalar; 0 for a batch with no real token.
    """
    loss_sum, token_count = decoder.masked_cross_entropy(y_true, logits)
    return tf.math.divide_no_nan(
        tf.reduce_sum(loss_sum), tf.cast(tf.reduce_sum(token_count), loss_sum.dtype)
    )


def masked_accuracy(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Fraction of non-``<pad>`` target tokens predicted exactly (teacher forcing)."""
    y_true = tf.cast(y_true, tf.int32)
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    mask = tf.cast(tf.not_equal(y_true, features.PAD_ID), tf.float32)
    hits = tf.cast(tf.equal(y_true, predicted), tf.float32) * mask
    return tf.math.divide_no_nan(tf.reduce_sum(hits), tf.reduce_sum(mask))


def caption_length(tft_output: tft.TFTransformOutput) -> int:
    """``max_len + 1``: the length of every caption id sequence Transform wrote."""
    spec = tft_output.transformed_feature_spec()[features.CAPTION_IDS_KEY]
    partitions = getattr(spec, 'partitions', ())
    if not isinstance(spec, tf.io.RaggedFeature) or len(partitions) != 1:
        raise ValueError(
            f'Transformed feature {features.CAPTION_IDS_KEY!r} should be ragged '
            f'[n_captions, max_len + 1] (models.preprocessing), got {spec}.'
        )
    return int(partitions[0].length)


def _list_files(file_patterns: List[str]) -> List[str]:
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f'No transformed examples match {file_patterns}.')
    return files


def _to_pairs(batch: dict) -> Tuple[dict, tf.Tensor]:
    """Parsed images -> one teacher-forcing pair per caption (image inputs repeated)."""
    captions = batch[features.CAPTION_IDS_KEY]  # ragged [images, (captions), max_len + 1]
    sequences = tf.cast(captions.values, tf.int32)  # [pairs, max_len + 1]
    inputs = {
        key: tf.repeat(batch[key], captions.row_lengths(), axis=0)
        for key in IMAGE_INPUTS
        if key in batch
    }
    inputs[features.DECODER_INPUT_KEY] = sequences[:, :-1]
    return inputs, sequences[:, 1:]


IMAGE_INPUTS = (features.NORMALIZED_FEATURES_KEY, features.NORMALIZED_REGIONS_KEY)
"""The transformed image features a decoder may read (the regions: attention only)."""

REGION_PAIR_BUFFER_BATCHES = 4
"""With regions (512 KiB per pair), pairs are shuffled within this many batches only;
images are shuffled before, in a buffer of ``shuffle_buffer // 5`` images."""


def input_fn(
    file_patterns: List[str],
    tft_output: tft.TFTransformOutput,
    batch_size: int,
    shuffle: bool,
    repeat: bool,
    shuffle_buffer: int = 10_000,
    seed: Optional[int] = None,
    regions: bool = False,
) -> tf.data.Dataset:
    """Transformed examples -> batches of (inputs dict, target ids), one pair per caption.

    Memory stays bounded with region features too: a pair-level shuffle
    buffer of 10,000 pairs would hold 5 GB of regions, so with regions the
    images are shuffled first (``shuffle_buffer // 5`` of them, about one
    pair buffer's worth of captions) and the pairs only within
    `REGION_PAIR_BUFFER_BATCHES` batches.

    Args:
      file_patterns: globs of Transform's GZIP TFRecord files.
      tft_output: Transform's output, for the transformed feature spec.
      batch_size: pairs per batch.
      shuffle: shuffle files and pairs (training); off for evaluation.
      repeat: repeat forever (when the step count, not the data, ends an epoch).
      shuffle_buffer: pairs held in the shuffle buffer.
      seed: shuffling seed.
      regions: also read `features.NORMALIZED_REGIONS_KEY` (attention decoder).

    Returns:
      A dataset of ``({NORMALIZED_FEATURES_KEY: float32[b, 2048],
      DECODER_INPUT_KEY: int32[b, max_len]} (and NORMALIZED_REGIONS_KEY
      float32[b, 64 * 2048] with `regions`), int32[b, max_len])``.

    Raises:
      ValueError: `regions` asked for, but Transform wrote none.
    """
    files = _list_files(file_patterns)
    full_spec = tft_output.transformed_feature_spec()
    keys = [features.NORMALIZED_FEATURES_KEY, features.CAPTION_IDS_KEY]
    if regions:
        if features.NORMALIZED_REGIONS_KEY not in full_spec:
            raise ValueError(
                'The attention decoder needs region features, and Transform wrote none: '
                'run the ImageFeatureExtractor with region_features=True (the default).'
            )
        keys.append(features.NORMALIZED_REGIONS_KEY)
    spec = {key: full_spec[key] for key in keys}
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = tf.data.TFRecordDataset(dataset, compression_type='GZIP')
    if shuffle and regions:
        dataset = dataset.shuffle(max(1, shuffle_buffer // 5), seed=seed)
    dataset = dataset.batch(_PARSE_BATCH).map(
        lambda records: _to_pairs(tf.io.parse_example(records, spec)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = dataset.unbatch()
    if shuffle:
        # Pair-level shuffle: the five captions of an image land in different batches.
        pair_buffer = REGION_PAIR_BUFFER_BATCHES * batch_size if regions else shuffle_buffer
        dataset = dataset.shuffle(pair_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def compile_decoder(model: keras.Model, hparams: HParams) -> keras.Model:
    """Compiles with RMSprop and the masked loss and accuracy."""
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=hparams.learning_rate),
        loss=masked_loss,
        metrics=[masked_accuracy],
    )
    return model


def _steps(total_steps: Optional[int], epochs: int) -> Optional[int]:
    """Steps per epoch for a total step budget; None means one pass over the data."""
    if not total_steps:
        return None
    return max(1, math.ceil(total_steps / epochs))


def train(
    model: keras.Model,
    train_dataset: tf.data.Dataset,
    eval_dataset: tf.data.Dataset,
    hparams: HParams,
    run_dir: str,
    steps_per_epoch: Optional[int] = None,
    validation_steps: Optional[int] = None,
) -> keras.callbacks.History:
    """Fits with early stopping on eval loss, checkpoints and TensorBoard; keeps the best weights.

    Args:
      model: a compiled decoder.
      train_dataset: training batches (repeated when `steps_per_epoch` is set).
      eval_dataset: eval batches (repeated when `validation_steps` is set).
      hparams: epochs and patience.
      run_dir: TensorBoard logs and checkpoints go here (the Trainer's ModelRun).
      steps_per_epoch: None for one pass over `train_dataset` per epoch.
      validation_steps: None for one pass over `eval_dataset`.

    Returns:
      The Keras history; the model holds the weights of the lowest eval loss.
    """
    best_weights = os.path.join(run_dir, 'checkpoints', 'best')
    callbacks = [
        keras.callbacks.EarlyStopping(monitor='val_loss', patience=hparams.patience),
        keras.callbacks.ModelCheckpoint(
            best_weights, monitor='val_loss', save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.TensorBoard(log_dir=run_dir, update_freq='epoch'),
    ]
    history = model.fit(
        train_dataset,
        epochs=hparams.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=eval_dataset,
        validation_steps=validation_steps,
        callbacks=callbacks,
        # One line per epoch: readable in TFX / Kubeflow logs, unlike a progress bar.
        verbose=2,
    )
    # The last epoch is rarely the best one once early stopping waited `patience`.
    if tf.io.gfile.exists(best_weights + '.index'):
        model.load_weights(best_weights).expect_partial()
    else:
        logging.warning('No eval loss was recorded (empty eval split?): keeping the last weights.')
    return history


def return_freed_memory() -> None:
    """Collects garbage and hands the heap that is free back to the operating system.

    The local runner executes every component in one process, and glibc keeps
    freed memory in its per-thread arenas: after training, export and three
    TFLite conversions the process held about 1.2 GB more than before, which
    the evaluator then started from (malloc_trim returned 700 MB of it when
    measured). Elsewhere than glibc (macOS, musl) this only collects garbage.
    """
    gc.collect()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


# TFX Trainer calls this.
def run_fn(fn_args) -> None:
    """Trains the decoder on the transformed examples and exports the combined model.

    Args:
      fn_args: TFX `FnArgs`: ``train_files``, ``eval_files``,
        ``transform_output``, ``base_model`` (the extractor's encoder),
        ``serving_model_dir``, ``model_run_dir``, ``train_steps``,
        ``eval_steps``, ``custom_config``.

    Raises:
      ValueError: no base model, or hyperparameters that contradict the
        transformed data.
    """
    _train_and_export(fn_args)
    # The models and datasets are unreachable once _train_and_export returns.
    return_freed_memory()


def _train_and_export(fn_args) -> None:
    hparams = HParams.from_custom_config(fn_args.custom_config or {})
    if not fn_args.base_model:
        raise ValueError(
            "The Trainer needs the extractor's encoder: pass "
            "base_model=extractor.outputs['encoder']."
        )
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    max_len = caption_length(tft_output) - 1
    if max_len != hparams.max_len:
        raise ValueError(
            f'custom_config max_len={hparams.max_len} but Transform padded captions to '
            f'max_len={max_len}; pass the same HParams to Transform and Trainer.'
        )
    vocab_size = tft_output.vocabulary_size_by_name(features.VOCAB_NAME)
    logging.info('Training the decoder: vocabulary %d, %s', vocab_size, hparams)

    keras.utils.set_random_seed(hparams.seed)
    steps_per_epoch = _steps(fn_args.train_steps, hparams.epochs)
    validation_steps = fn_args.eval_steps or None
    train_dataset = input_fn(
        fn_args.train_files,
        tft_output,
        hparams.batch_size,
        shuffle=True,
        repeat=steps_per_epoch is not None,
        shuffle_buffer=hparams.shuffle_buffer,
        seed=hparams.seed,
        regions=hparams.attention,
    )
    eval_dataset = input_fn(
        fn_args.eval_files,
        tft_output,
        hparams.batch_size,
        shuffle=False,
        repeat=validation_steps is not None,
        regions=hparams.attention,
    )
    model = compile_decoder(decoder.build_decoder(hparams, vocab_size), hparams)
    model.summary(print_fn=logging.info)
    train(
        model,
        train_dataset,
        eval_dataset,
        hparams,
        run_dir=fn_args.model_run_dir,
        steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps,
    )
    caption_model = export.export_serving_model(
        fn_args.serving_model_dir,
        decoder_model=model,
        encoder_dir=fn_args.base_model,
        tft_output=tft_output,
        max_len=max_len,
        beam_width=hparams.beam_width,
        beam_length_alpha=hparams.beam_length_alpha,
    )
    # The phone variants of the same weights, beside Format-Serving in the Model
    # artifact (Format-TFLite/<quantization>/): the evaluator measures each
    # one's size, latency and caption agreement; the Pusher ships the smallest
    # that agrees.
    tflite_root = os.path.join(
        os.path.dirname(fn_args.serving_model_dir.rstrip('/')), features.TFLITE_MODEL_DIR
    )
    for quantization in hparams.tflite_variants:
        path = tflite_export.write_tflite(
            caption_model,
            caption_model.words,
            os.path.join(tflite_root, quantization),
            quantization,
        )
        logging.info('Wrote the %s TFLite variant to %s.', quantization, path)
