"""`caption-pipeline`: run the captioning pipeline, caption images, rebuild the report.

caption-pipeline run                              # the generated sample data
caption-pipeline run --data ~/Flickr8k            # the real dataset
caption-pipeline caption photo.jpg holiday/       # the latest pushed model
caption-pipeline caption --beam photo.jpg         # ... decoded by beam search
caption-pipeline report                           # rebuild build/report/

An expected mistake (a wrong directory, nothing pushed yet, a bad image) ends
in one line; `--verbose` also shows its traceback.
"""

import argparse
import json
import os
import sys
import textwrap
import time
import traceback
from typing import Any, Dict, Iterator, List, Optional, Tuple

from tfx_captioning.cli import quiet, score
from tfx_captioning.models import features, image_files
from tfx_captioning.models.hparams import HParams
from tfx_captioning.pipeline import configs

CAPTION_BATCH_SIZE = 16
"""Images per SavedModel call in `caption`: one graph call amortised, bounded memory."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def _hparam(text: str):
    key, sep, value = text.partition('=')
    if not sep:
        raise argparse.ArgumentTypeError(f'expected KEY=VALUE, got {text!r}')
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='caption-pipeline',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--verbose', action='store_true', help='show TensorFlow/Beam/TFX logs')
    parser.add_argument(
        '--output',
        default=configs.DEFAULT_OUTPUT_ROOT,
        help='output root for artifacts, metadata, models and report (default: %(default)s)',
    )
    sub = parser.add_subparsers(dest='command', required=True)
    run = sub.add_parser('run', help='run the pipeline locally (Beam DirectRunner)')
    run.add_argument('--data', help='Flickr8k directory; default: generate the sample data')
    run.add_argument(
        '--beam-workers',
        type=_positive_int,
        default=1,
        help='Beam worker processes; >1 uses multi_processing (default: %(default)s)',
    )
    run.add_argument(
        '--beam-runner',
        choices=configs.BEAM_RUNNERS,
        default='direct',
        help="runner of the Beam steps: 'direct', or 'portable': Beam's PortableRunner on a local "
        'job service whose worker pool runs each job in a separate SDK worker process, started '
        'and stopped for the run (default: %(default)s)',
    )
    run.add_argument(
        '--sample-images',
        type=_positive_int,
        default=configs.DEFAULT_SAMPLE_IMAGES,
        help='size of the generated sample data (default: %(default)s)',
    )
    run.add_argument(
        '--encoder-weights',
        help="InceptionV3 weights: 'imagenet' (default with --data), 'random' (default for the "
        'sample data) or a weights file path',
    )
    run.add_argument(
        '--encoder-precision',
        choices=('auto', 'float32', 'bfloat16'),
        default='float32',
        help="the feature extractor's InceptionV3 compute precision: 'auto' is bfloat16 where "
        'the CPU has AVX512-BF16 or AMX, float32 elsewhere; features are stored as float32 '
        'and the served model stays float32 (default: %(default)s)',
    )
    run.add_argument(
        '--decoder',
        choices=features.DECODERS,
        help="the caption decoder: 'attention' (Show, Attend and Tell over the 8x8 InceptionV3 "
        "regions) or 'init_inject' (the seed tutorial's; the pooled features start the GRUs); "
        f'default: {HParams().decoder} (the sample: '
        f'{configs.SAMPLE_HPARAMS.get("decoder", HParams().decoder)}); same as --hparam decoder=...',
    )
    run.add_argument(
        '--no-region-features',
        dest='region_features',
        action='store_false',
        help="don't keep InceptionV3's 8x8 region features (256 KiB per image), which only "
        'the attention decoder reads; switching decoders later then re-runs the extractor',
    )
    run.add_argument('--train-steps', type=_positive_int, help='total training steps')
    run.add_argument(
        '--hparam',
        action='append',
        type=_hparam,
        default=[],
        metavar='KEY=VALUE',
        help='a models.hparams.HParams field, e.g. --hparam epochs=20 (repeatable)',
    )
    run.add_argument(
        '--gate',
        action='append',
        type=_hparam,
        default=[],
        metavar='KEY=VALUE',
        help='a blessing-gate setting (components/caption_evaluator/gate.py GateConfig), e.g. '
        '--gate min_margin_over_baseline=0.2 (repeatable)',
    )
    run.add_argument(
        '--min-metric',
        action='append',
        type=_hparam,
        default=[],
        metavar='NAME=VALUE',
        help='an absolute floor on an eval metric, e.g. --min-metric BLEU-4=0.15 (repeatable)',
    )
    run.add_argument('--min-bleu-4', type=float, help='short for --min-metric BLEU-4=X')
    run.add_argument('--max-loss', type=float, help='blessing ceiling on the masked eval loss')
    run.add_argument(
        '--min-tflite-agreement',
        type=float,
        help='share of eval images a TFLite variant must caption as the SavedModel does to '
        'ship (default 0.95)',
    )
    run.add_argument('--no-cache', action='store_true', help='re-run every component')
    caption = sub.add_parser(
        'caption',
        help='caption images with the latest pushed model',
        description=textwrap.dedent(
            """\
            Captions image files and directories in-process with a pushed SavedModel.
            Each good image gets a `file<TAB>caption` line; each bad one a
            `file<TAB>error: reason` line on stderr, and the others are still
            captioned. Exit status: 0 when every image got a caption, 1 when any
            did not, 2 for a usage error or no usable model."""
        ),
        epilog=image_files.describe_accepted(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    caption.add_argument('images', nargs='+', metavar='IMAGE', help='image files or directories')
    caption.add_argument(
        '--model-dir',
        help='a SavedModel version directory, e.g. build/serving/captioner/3 '
        '(default: the latest push of --output)',
    )
    caption.add_argument(
        '--json',
        action='store_true',
        help='print one JSON object per file: {"file", "caption"} or {"file", "error"}',
    )
    caption.add_argument(
        '--beam', action='store_true', help='decode by beam search (the caption_beam signature)'
    )
    sub.add_parser('report', help="rebuild the latest run's HTML report and contact sheet")
    score.add_parser(sub)
    return parser


def _prepare_sample(paths: configs.LocalPaths, num_images: int) -> str:
    from tfx_captioning.cli import sample_data

    marker = os.path.join(
        paths.sample_data, f'.generated-{num_images}-{configs.DEFAULT_SAMPLE_SEED}'
    )
    truth = os.path.join(paths.sample_data, sample_data.ATTRIBUTES_FILE)
    # A sample generated before the truth file existed is regenerated: the same
    # seed rewrites identical images, so cached components stay valid.
    if not (os.path.exists(marker) and os.path.exists(truth)):
        print(f'Generating {num_images} sample images in {paths.sample_data} ...')
        sample_data.generate(paths.sample_data, num_images, configs.DEFAULT_SAMPLE_SEED)
        open(marker, 'w').close()
    return paths.sample_data


def pipeline_args(args: argparse.Namespace) -> Dict[str, Any]:
    """create_pipeline's parameter objects from the flags; the sample's defaults without --data.

    Building the objects validates every flag, so a typo fails before anything runs.

    Raises:
      ValueError: naming the bad flag value.
    """
    from tfx_captioning.components.caption_evaluator import gate as gate_lib
    from tfx_captioning.components.caption_evaluator.spec import EvaluatorParameters
    from tfx_captioning.components.image_feature_extractor.spec import ExtractorParameters
    from tfx_captioning.pipeline.pipeline import check_compatible

    sample = not args.data
    hparams = dict(configs.SAMPLE_HPARAMS) if sample else {}
    hparams.update(dict(args.hparam))
    if args.decoder:
        hparams['decoder'] = args.decoder
    gate = dict(args.gate)
    min_metrics = dict(gate.pop('min_metrics', None) or {})
    min_metrics.update({name: float(value) for name, value in args.min_metric})
    if args.min_bleu_4 is not None:
        min_metrics['BLEU-4'] = args.min_bleu_4
    if args.max_loss is not None:
        gate['max_loss'] = args.max_loss
    parsed_hparams = HParams.from_custom_config(hparams)
    extractor = ExtractorParameters(
        weights=args.encoder_weights or (configs.SAMPLE_ENCODER_WEIGHTS if sample else 'imagenet'),
        encoder_precision=args.encoder_precision,
        region_features=args.region_features,
    ).validate()
    check_compatible(parsed_hparams, extractor)
    return {
        'hparams': parsed_hparams,
        'extractor': extractor,
        'evaluator': EvaluatorParameters(
            gate=gate_lib.GateConfig.from_dict({**gate, 'min_metrics': min_metrics})
        ).validate(),
        'train_steps': args.train_steps,
        'min_tflite_agreement': args.min_tflite_agreement,
    }


def cmd_run(args: argparse.Namespace) -> int:
    from tfx_captioning.cli import interrupt, progress

    paths = configs.LocalPaths(os.path.abspath(args.output))
    tracker = progress.RunProgress(paths.metadata_path)
    # Ctrl-C / SIGTERM anywhere below: exit 130 within seconds, saying what stopped.
    with interrupt.RunInterrupts(lambda signal_name: _stopped(tracker, paths, signal_name)) as stop:
        try:
            return _run(args, paths, tracker)
        except BaseException:
            if stop.requested:
                stop.stop()
            raise


def _run(args: argparse.Namespace, paths: configs.LocalPaths, tracker) -> int:
    from tfx_captioning.components.flickr8k_example_gen import layout

    data = args.data or _prepare_sample(paths, args.sample_images)
    try:
        layout.check_layout(data)
        kwargs = pipeline_args(args)
        from tfx_captioning.pipeline import local_runner
    except (layout.Flickr8kLayoutError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    from tfx_captioning.models import encoder

    requested = kwargs['extractor'].encoder_precision
    precision = encoder.resolve_precision(requested)
    if requested == encoder.PRECISION_AUTO:
        precision += ' (auto, on this CPU)'
    print(f'Running {configs.PIPELINE_NAME} on {data} -> {paths.output_root}')
    print(
        f'  encoder weights: {kwargs["extractor"].weights}, precision: {precision}, '
        f'hyperparameters: {kwargs["hparams"].to_custom_config()}'
    )
    start = time.monotonic()
    try:
        with tracker:
            local_runner.run(
                data,
                args.output,
                args.beam_workers,
                enable_cache=not args.no_cache,
                beam_runner=args.beam_runner,
                **kwargs,
            )
    except Exception as error:  # a component failed: name it and the cause in one line
        failed = ', '.join(dict.fromkeys(tracker.unsuccessful().values())) or 'the pipeline'
        _error(args, f'{failed} failed: {failure_cause(error)}')
        if not args.verbose:
            print('(--verbose shows the traceback)', file=sys.stderr)
        return 1
    print(f'Pipeline finished in {time.monotonic() - start:.1f} s')
    print_summary(paths, data_root=data)
    return 0


def failure_cause(error: BaseException) -> str:
    """The innermost cause of a failed run as one line: 'ErrorType: first line of its message'."""
    while error.__cause__ is not None or (
        error.__context__ is not None and not error.__suppress_context__
    ):
        error = error.__cause__ or error.__context__
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0] if lines else "(no message)"}'


def _stopped(tracker, paths: configs.LocalPaths, signal_name: str) -> None:
    """After SIGINT/SIGTERM: cancel what was running, print its line and how to resume."""
    from tfx_captioning.cli import interrupt

    tracker.pause()
    stopped = tracker.unsuccessful()
    interrupt.cancel_executions(paths.metadata_path, paths.pipeline_root, stopped)
    tracker.poll()  # '<component> cancelled after ...'
    where = f' during {", ".join(dict.fromkeys(stopped.values()))}' if stopped else ''
    print(
        f'\nInterrupted by {signal_name}{where}. Nothing it wrote will be used. Run the same '
        'command again to resume: completed components come from the cache.',
        file=sys.stderr,
    )


def print_summary(paths: configs.LocalPaths, data_root: Optional[str] = None) -> None:
    """Prints what the latest run produced: data, validation, metrics, decision, models.

    On the generated sample data it also prints how often the test captions
    name each true attribute; `data_root` is the run's data directory, by
    default the ExampleGen's `input_base` from ML Metadata.
    """
    from tfx_captioning.cli import attributes, summary

    store = summary.open_store(paths.metadata_path)
    report = summary.ingestion_report(store)
    if report:
        print(
            '\nExamples per split: ' + ', '.join(f'{s} {n}' for s, n in report['examples'].items())
        )
        skipped = {k: v for k, v in report['skipped'].items() if v}
        print('Skipped inputs: ' + (', '.join(f'{k} {v}' for k, v in skipped.items()) or 'none'))
    found = summary.anomalies(store)
    if found:
        bad = {s: items for s, items in found.items() if items}
        print(
            'Data validation: '
            + ('; '.join(f'{s}: {", ".join(i)}' for s, i in bad.items()) or 'no anomalies')
        )
    metrics = summary.evaluation_metrics(store)
    if metrics:
        print('\n' + summary.format_metrics_table(metrics))
    try:
        accuracy = summary.known_truth_accuracy(store, data_root)
    except ValueError as error:  # a bad truth file must not hide the rest of the summary
        print(f'\nAttribute check skipped: {error}')
    else:
        if accuracy:
            print('\n' + attributes.format_attribute_table(accuracy))
    decision = summary.latest_decision(store)
    pushed = summary.latest_pushed(store)
    if metrics:
        shipped = pushed.get('tflite_variant') if decision and decision['pushed'] else None
        print('\n' + summary.format_tflite_table(metrics.get('tflite') or [], shipped))
    if decision:
        verdict = 'BLESSED' if decision['blessed'] else 'NOT BLESSED'
        print(f'\nModel {verdict}: {decision["reason"]}')
        if not decision['pushed']:
            print(
                'Nothing pushed'
                + (f': {decision["not_pushed_reason"]}' if decision['not_pushed_reason'] else '.')
            )
            if pushed:
                print(f'Still serving the previous push: {pushed["saved_model"]}')
    if pushed and decision and decision['pushed']:
        print(f'Pushed SavedModel: {pushed["saved_model"]}')
        print(
            f'Pushed TFLite:     {pushed["tflite"]} ({pushed["tflite_choice"]})'
            if pushed['tflite']
            else f'TFLite not published: {pushed["tflite_choice"] or "no TFLite root"}'
        )
        _print_sample_captions(store, pushed['saved_model'])
    try:
        from tfx_captioning.cli import report as report_lib

        built = report_lib.build_report(paths, data_root=data_root)
        print(f'\nReport: {built["html"]} (contact sheet {built["contact_sheet"]})')
    except FileNotFoundError:
        pass


def _print_sample_captions(store, model_dir: str, count: int = 3) -> None:
    from tfx_captioning.cli import report as report_lib
    from tfx_captioning.cli import summary
    from tfx_captioning.models import features

    raw = summary.raw_examples(store)
    if raw is None:
        return
    images = report_lib.first_images(raw.uri, features.TEST_SPLIT, count)
    captions = caption_bytes(model_dir, [data for _, data in images])
    print(f'\nCaptions for {len(images)} test images (in-process SavedModel):')
    for (image_id, _), caption in zip(images, captions):
        print(f'  {image_id}: {caption}')


def caption_bytes(model_dir: str, images: List[bytes], beam: bool = False) -> List[str]:
    """Captions encoded images with a SavedModel version directory, in-process.

    `beam` decodes with the beam-search signature instead of the greedy one.
    """
    return _caption_batch(_serving_signature(model_dir, beam), images)


def _serving_signature(model_dir: str, beam: bool = False):
    import tensorflow as tf

    from tfx_captioning.models import features

    name = features.BEAM_SIGNATURE if beam else features.SERVING_SIGNATURE
    return tf.saved_model.load(model_dir).signatures[name]


def _caption_batch(signature, images: List[bytes]) -> List[str]:
    import tensorflow as tf

    from tfx_captioning.models import features

    out = signature(**{features.IMAGE_BYTES_INPUT: tf.constant(images)})
    return [c.decode('utf-8') for c in out[features.CAPTION_OUTPUT].numpy()]


class ModelDirError(ValueError):
    """`--model-dir` (or the latest push) is not a SavedModel version directory of a captioner."""


def load_caption_signature(model_dir: str, beam: bool = False):
    """The captioning signature of a pushed SavedModel version directory.

    `beam` picks the beam-search signature instead of the greedy one.

    Raises:
      ModelDirError: naming what is wrong: a missing path, a model base path
        instead of one of its versions, a directory without `saved_model.pb`,
        a SavedModel that does not load or has no image captioning signature.
    """
    from tfx_captioning.models import features

    example = f'{features.DEFAULT_MODEL_BASE_PATH}/<version>'
    if not os.path.exists(model_dir):
        raise ModelDirError(f'{model_dir} does not exist.')
    if not os.path.isdir(model_dir):
        raise ModelDirError(
            f'{model_dir} is a file, not a SavedModel version directory ({example}).'
        )
    if not os.path.isfile(os.path.join(model_dir, 'saved_model.pb')):
        versions = sorted(
            int(name)
            for name in os.listdir(model_dir)
            if name.isdigit() and os.path.isfile(os.path.join(model_dir, name, 'saved_model.pb'))
        )
        if versions:
            raise ModelDirError(
                f'{model_dir} holds model versions {", ".join(map(str, versions))}: give one, '
                f'e.g. --model-dir {os.path.join(model_dir, str(versions[-1]))}'
            )
        raise ModelDirError(
            f'{model_dir} has no saved_model.pb: not a SavedModel version directory ({example}).'
        )
    import tensorflow as tf

    try:
        signatures = tf.saved_model.load(model_dir).signatures
    except Exception as error:  # TF raises several types for a damaged SavedModel.
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelDirError(
            f'could not load the SavedModel in {model_dir}: {first_line}'
        ) from error
    name = features.BEAM_SIGNATURE if beam else features.SERVING_SIGNATURE
    signature = signatures.get(name)
    if beam and signature is None and features.SERVING_SIGNATURE in signatures:
        raise ModelDirError(
            f'{model_dir} has no {name!r} signature: it was exported before beam search; '
            'train it again, or caption without --beam.'
        )
    if (
        signature is None
        or features.IMAGE_BYTES_INPUT not in signature.structured_input_signature[1]
    ):
        raise ModelDirError(
            f'{model_dir} has no {name!r} signature taking '
            f'{features.IMAGE_BYTES_INPUT!r}: not a captioning model pushed by this pipeline.'
        )
    return signature


def _caption_or_isolate(
    signature, images: List[bytes]
) -> List[Tuple[Optional[str], Optional[str]]]:
    """(caption, None) or (None, reason) per image: one call, or one per image if it fails.

    The graph refuses the whole batch for one image it cannot decode (a
    truncated file whose header is intact), so a failed batch is rerun
    image by image to caption the others and name the bad one.
    """
    import tensorflow as tf

    from tfx_captioning.models import tf_errors

    if not images:
        return []
    try:
        return [(caption, None) for caption in _caption_batch(signature, images)]
    except tf.errors.InvalidArgumentError as error:
        if len(images) == 1:
            reason = tf_errors.clean_tf_error_message(error.message)
            return [(None, f'{image_files.NOT_DECODABLE}: {reason}')]
    return [_caption_or_isolate(signature, [image])[0] for image in images]


def caption_files(
    signature, paths: List[str], batch_size: int = CAPTION_BATCH_SIZE, verbose: bool = False
) -> Iterator[image_files.CaptionResult]:
    """Captions every image of `paths` (files and directories), in order, `batch_size` a call.

    Each file is checked first as every runtime checks it
    (`image_files.read_image_file`), so only images the graph may decode reach
    it; the rest get their one-line reason.
    """
    files = image_files.list_image_files(paths)
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        readable: Dict[int, bytes] = {}
        errors: Dict[int, str] = {}
        for index, path in enumerate(chunk):
            try:
                readable[index] = image_files.read_image_file(path)
            except image_files.ImageError as error:
                if verbose:
                    traceback.print_exc()
                errors[index] = str(error)
        outcomes = dict(zip(readable, _caption_or_isolate(signature, list(readable.values()))))
        for index, path in enumerate(chunk):
            caption, error = outcomes.get(index, (None, errors.get(index)))
            yield image_files.CaptionResult(path, caption=caption, error=error)


def _error(args: argparse.Namespace, message: str) -> None:
    """Prints one line; with --verbose also the traceback of the exception being handled."""
    if args.verbose and sys.exc_info()[0] is not None:
        traceback.print_exc()
    print(f'error: {message}', file=sys.stderr)


def cmd_caption(args: argparse.Namespace) -> int:
    from tfx_captioning.cli import summary

    model_dir = args.model_dir
    if not model_dir:
        paths = configs.LocalPaths(os.path.abspath(args.output))
        try:
            model_dir = summary.latest_pushed(summary.open_store(paths.metadata_path)).get(
                'saved_model'
            )
        except FileNotFoundError as e:
            _error(args, str(e))
            return 2
        if not model_dir:
            _error(args, 'no model has been pushed yet: run `caption-pipeline run`.')
            return 2
    try:
        signature = load_caption_signature(model_dir, beam=args.beam)
    except ModelDirError as e:
        what = '--model-dir' if args.model_dir else 'the latest pushed model'
        _error(args, f'{what}: {e}')
        return 2
    results = caption_files(signature, args.images, verbose=args.verbose)
    return image_files.write_results(results, args.json)


def cmd_report(args: argparse.Namespace) -> int:
    from tfx_captioning.cli import report as report_lib

    try:
        built = report_lib.build_report(configs.LocalPaths(os.path.abspath(args.output)))
    except FileNotFoundError as e:
        _error(args, str(e))
        return 2
    print(f'Report: {built["html"]}\nContact sheet: {built["contact_sheet"]}')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    quiet.configure(args.verbose)
    return {
        'run': cmd_run,
        'caption': cmd_caption,
        'report': cmd_report,
        'score': score.run,
    }[args.command](args)


if __name__ == '__main__':
    sys.exit(main())
