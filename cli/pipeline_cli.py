"""`caption-pipeline`: run the captioning pipeline, caption images, rebuild the report.

caption-pipeline run                              # the generated sample data
caption-pipeline run --data ~/Flickr8k            # the real dataset
caption-pipeline caption photo.jpg other.png      # the latest pushed model
caption-pipeline report                           # rebuild build/report/
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

from tfx_captioning.cli import quiet, score
from tfx_captioning.pipeline import configs


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
    caption = sub.add_parser('caption', help='caption images with the latest pushed model')
    caption.add_argument('images', nargs='+')
    caption.add_argument(
        '--model-dir', help='a SavedModel version directory (default: latest push)'
    )
    sub.add_parser('report', help="rebuild the latest run's HTML report and contact sheet")
    score.add_parser(sub)
    return parser


def _prepare_sample(paths: configs.LocalPaths, num_images: int) -> str:
    from tfx_captioning.cli import sample_data

    marker = os.path.join(
        paths.sample_data, f'.generated-{num_images}-{configs.DEFAULT_SAMPLE_SEED}'
    )
    if not os.path.exists(marker):
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
    from tfx_captioning.models.hparams import HParams

    sample = not args.data
    hparams = dict(configs.SAMPLE_HPARAMS) if sample else {}
    hparams.update(dict(args.hparam))
    gate = dict(args.gate)
    min_metrics = dict(gate.pop('min_metrics', None) or {})
    min_metrics.update({name: float(value) for name, value in args.min_metric})
    if args.min_bleu_4 is not None:
        min_metrics['BLEU-4'] = args.min_bleu_4
    if args.max_loss is not None:
        gate['max_loss'] = args.max_loss
    return {
        'hparams': HParams.from_custom_config(hparams),
        'extractor': ExtractorParameters(
            weights=args.encoder_weights
            or (configs.SAMPLE_ENCODER_WEIGHTS if sample else 'imagenet')
        ).validate(),
        'evaluator': EvaluatorParameters(
            gate=gate_lib.GateConfig.from_dict({**gate, 'min_metrics': min_metrics})
        ).validate(),
        'train_steps': args.train_steps,
        'min_tflite_agreement': args.min_tflite_agreement,
    }


def cmd_run(args: argparse.Namespace) -> int:
    from tfx_captioning.components.flickr8k_example_gen import layout

    paths = configs.LocalPaths(os.path.abspath(args.output))
    data = args.data or _prepare_sample(paths, args.sample_images)
    try:
        layout.check_layout(data)
        kwargs = pipeline_args(args)
        from tfx_captioning.cli import progress
        from tfx_captioning.pipeline import local_runner
    except (layout.Flickr8kLayoutError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'Running {configs.PIPELINE_NAME} on {data} -> {paths.output_root}')
    print(
        f'  encoder weights: {kwargs["extractor"].weights}, '
        f'hyperparameters: {kwargs["hparams"].to_custom_config()}'
    )
    progress.attach()
    start = time.monotonic()
    local_runner.run(
        data,
        args.output,
        args.beam_workers,
        enable_cache=not args.no_cache,
        beam_runner=args.beam_runner,
        **kwargs,
    )
    print(f'Pipeline finished in {time.monotonic() - start:.1f} s')
    print_summary(paths)
    return 0


def print_summary(paths: configs.LocalPaths) -> None:
    """Prints what the latest run produced: data, validation, metrics, decision, models."""
    from tfx_captioning.cli import summary

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

        built = report_lib.build_report(paths)
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


def caption_bytes(model_dir: str, images: List[bytes]) -> List[str]:
    """Captions encoded images with a SavedModel version directory, in-process."""
    import tensorflow as tf

    from tfx_captioning.models import features

    signature = tf.saved_model.load(model_dir).signatures[features.SERVING_SIGNATURE]
    out = signature(**{features.IMAGE_BYTES_INPUT: tf.constant(images)})
    return [c.decode('utf-8') for c in out[features.CAPTION_OUTPUT].numpy()]


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
            print(f'error: {e}', file=sys.stderr)
            return 2
        if not model_dir:
            print(
                'error: no model has been pushed yet: run `caption-pipeline run`.', file=sys.stderr
            )
            return 2
    images = []
    for path in args.images:
        try:
            with open(path, 'rb') as f:
                images.append(f.read())
        except OSError as e:
            print(f'error: {e}', file=sys.stderr)
            return 2
    try:
        captions = caption_bytes(model_dir, images)
    except Exception as e:  # TensorFlow raises InvalidArgumentError for undecodable images
        print(f'error: could not caption: {str(e).splitlines()[0]}', file=sys.stderr)
        return 1
    for path, caption in zip(args.images, captions):
        print(f'{path}\t{caption}')
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tfx_captioning.cli import report as report_lib

    try:
        built = report_lib.build_report(configs.LocalPaths(os.path.abspath(args.output)))
    except FileNotFoundError as e:
        print(f'error: {e}', file=sys.stderr)
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
