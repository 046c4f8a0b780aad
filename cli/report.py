"""The evaluation report: an HTML page and a PNG contact sheet of test images.

Everything comes from the latest run's artifacts in ML Metadata: the
evaluator's metrics.json (coco-caption metrics, loss, sample captions with their
references, the most-frequent-caption baseline, the blessing decision, each
TFLite variant's size, latency and agreement),
the Trainer's TensorBoard logs (loss curves), the pushed SavedModel and TFLite
file (sizes) and the ExampleGen's test images; on the generated sample data,
also how often the test captions name each true attribute (evaluator's
captions.json against the data's truth file, `cli/attributes.py`); for an
attention model, where it looked for each word of a few test captions (its
`ATTENTION_SIGNATURE`, drawn by `cli/attention_maps.py`). The HTML is
self-contained (images inlined), so it can be mailed or attached to a review.
"""

import html
import io
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont
from tensorflow.core.protobuf import saved_model_pb2
from tfx.utils import path_utils

from tfx_captioning.cli import attention_maps, summary
from tfx_captioning.components.caption_evaluator import spec as evaluator_spec
from tfx_captioning.models import features

THUMB = (200, 150)


def directory_size(path: str) -> int:
    total = 0
    for dirpath, _, files in tf.io.gfile.walk(path):
        for name in files:
            total += tf.io.gfile.stat(os.path.join(dirpath, name)).length
    return total


def loss_curves(log_dir: str) -> Dict[str, List[Tuple[int, float]]]:
    """{'train': [(epoch, loss)], 'validation': [...]} from Keras TensorBoard logs."""
    curves: Dict[str, List[Tuple[int, float]]] = {}
    for name in ('train', 'validation'):
        points = []
        for path in tf.io.gfile.glob(os.path.join(log_dir, name, 'events.out.tfevents.*')):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag == 'epoch_loss':
                        number = (
                            float(tf.make_ndarray(value.tensor))
                            if value.HasField('tensor')
                            else value.simple_value
                        )
                        points.append((int(event.step), number))
        if points:
            curves[name] = sorted(points)
    return curves


def read_images(raw_examples_uri: str, split: str, image_ids: List[str]) -> Dict[str, bytes]:
    wanted = set(image_ids)
    found = {}
    files = tf.io.gfile.glob(os.path.join(raw_examples_uri, f'Split-{split}', '*'))
    for record in tf.data.TFRecordDataset(files, compression_type='GZIP'):
        example = tf.train.Example.FromString(record.numpy()).features.feature
        image_id = example[features.IMAGE_ID_KEY].bytes_list.value[0].decode('utf-8')
        if image_id in wanted:
            found[image_id] = example[features.IMAGE_KEY].bytes_list.value[0]
            if len(found) == len(wanted):
                break
    return found


def thumbnail(image_bytes: bytes) -> Image.Image:
    with Image.open(io.BytesIO(image_bytes)) as img:
        img = img.convert('RGB')
        img.thumbnail(THUMB)
        return img.copy()


def contact_sheet(
    samples: List[Dict[str, Any]], images: Dict[str, bytes], columns: int = 3
) -> Image.Image:
    """A grid of test images with the predicted caption (bold line) and one reference."""
    font = ImageFont.load_default()
    cell_w, cell_h = THUMB[0] + 20, THUMB[1] + 60
    rows = max(1, (len(samples) + columns - 1) // columns)
    sheet = Image.new('RGB', (cell_w * columns, cell_h * rows), 'white')
    draw = ImageDraw.Draw(sheet)
    for i, sample in enumerate(samples):
        x, y = (i % columns) * cell_w + 10, (i // columns) * cell_h + 5
        if sample['image_id'] in images:
            sheet.paste(thumbnail(images[sample['image_id']]), (x, y))
        draw.text((x, y + THUMB[1] + 4), _fit(sample['caption'], 34), fill='black', font=font)
        reference = sample['references'][0] if sample['references'] else ''
        draw.text((x, y + THUMB[1] + 20), _fit('ref: ' + reference, 34), fill='gray', font=font)
    return sheet


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + '…'


def _svg_curves(curves: Dict[str, List[Tuple[int, float]]]) -> str:
    if not curves:
        return '<p>No TensorBoard loss logs found.</p>'
    w, h, pad = 480, 220, 30
    all_points = [p for pts in curves.values() for p in pts]
    max_x = max(max(x for x, _ in all_points), 1)
    lo, hi = min(v for _, v in all_points), max(v for _, v in all_points)
    hi = hi if hi > lo else lo + 1
    colours = {'train': '#1f77b4', 'validation': '#d62728'}
    lines = []
    for name, pts in curves.items():
        coords = ' '.join(
            f'{pad + (w - 2 * pad) * x / max_x:.1f},{h - pad - (h - 2 * pad) * (v - lo) / (hi - lo):.1f}'
            for x, v in pts
        )
        lines.append(
            f'<polyline fill="none" stroke="{colours.get(name, "black")}" stroke-width="2" '
            f'points="{coords}"/><text x="{w - 110}" y="{20 + 16 * len(lines)}" '
            f'fill="{colours.get(name, "black")}">{name} loss</text>'
        )
    return (
        f'<svg width="{w}" height="{h}" style="border:1px solid #ccc">'
        f'<text x="4" y="{pad - 8}" font-size="11">{hi:.3f}</text>'
        f'<text x="4" y="{h - pad + 14}" font-size="11">{lo:.3f}</text>'
        f'<text x="{w - 60}" y="{h - 6}" font-size="11">epoch {max_x}</text>'
        + ''.join(lines)
        + '</svg>'
    )


def _b64_png(image: Image.Image) -> str:
    return attention_maps.png_base64(image)


def _milliseconds(value: Optional[float]) -> str:
    return '—' if value is None else f'{value:.0f} ms'


def attribute_section(
    accuracy: Optional[Mapping[str, Mapping[str, Mapping[str, float]]]], problem: str = ''
) -> str:
    """The known-truth attribute table as HTML; '' without a truth (real Flickr8k).

    Args:
      accuracy: decoding -> attribute -> {'correct', 'named', 'images'}
        (`summary.known_truth_accuracy`), or None.
      problem: why the check could not be made, shown instead of the table.
    """
    e = html.escape
    title = '<h2>Attributes in test captions (known truth)</h2>'
    if problem:
        return f'{title}<p>Not checked: {e(problem)}</p>'
    if not accuracy:
        return ''
    decodings = list(accuracy)
    labels = {'greedy': 'greedy', 'beam': 'beam search'}
    images = next(iter(accuracy[decodings[0]].values()))['images']
    rows = ''.join(
        f'<tr><td>{e(attribute)}</td>'
        + ''.join(
            f'<td>{accuracy[d][attribute]["correct"]:.1%} '
            f'<small>({accuracy[d][attribute]["named"]:.1%} named)</small></td>'
            for d in decodings
        )
        + '</tr>'
        for attribute in accuracy[decodings[0]]
    )
    return (
        f'{title}<p>Share of the {images} test images whose caption names the true value '
        '(and no other) of each attribute the sample generator drew; in brackets, the share '
        'whose caption names any value of it.</p>'
        '<table><tr><th>attribute</th>'
        + ''.join(f'<th>{e(labels.get(d, d))}</th>' for d in decodings)
        + f'</tr>{rows}</table>'
    )


def render_html(
    report: Dict[str, Any],
    curves: Dict[str, List[Tuple[int, float]]],
    sizes: Dict[str, Optional[int]],
    sheet: Image.Image,
    shipped: Optional[str] = None,
    attributes_html: str = '',
    attention_html: str = '',
) -> str:
    """The report page as a string (pure: easy to test).

    `attributes_html` is `attribute_section`'s table, placed after the metrics;
    `attention_html` is `attention_section`'s maps, placed after the test images.
    """
    e = html.escape
    names = list(features.METRIC_NAMES)
    rows = []
    for split, result in report['splits'].items():
        systems = [('model, greedy', result['metrics'])]
        if result.get('beam'):
            systems.append(('model, beam search', result['beam']))
        if result.get('most_frequent_caption'):
            systems.append(('most frequent caption', result['most_frequent_caption']))
        for label, m in systems:
            loss = m.get('loss')
            rows.append(
                f'<tr><td>{e(split)}</td><td>{e(label)}</td>'
                + ''.join(f'<td>{m[n]:.4f}</td>' for n in names)
                + f'<td>{"—" if loss is None else f"{loss:.4f}"}</td></tr>'
            )
    verdict = (
        'BLESSED: ' + report.get('reason', '')
        if report['blessed']
        else ('NOT BLESSED: ' + '; '.join(report['failures']))
    )
    size_rows = ''.join(
        f'<tr><td>{e(k)}</td><td>{"—" if v is None else f"{v / 1e6:.1f} MB"}</td></tr>'
        for k, v in sizes.items()
    )
    tflite_rows = ''.join(
        f'<tr><td>{e(c["variant"])}</td><td>{c["size_bytes"] / 1e6:.1f} MB</td>'
        f'<td>{_milliseconds(c.get("latency_ms"))}</td>'
        f'<td>{c["agreement"]:.1%}</td><td>{"shipped" if c["variant"] == shipped else ""}</td></tr>'
        for c in report.get('tflite') or []
    )
    samples = report['splits'].get(features.TEST_SPLIT, {}).get('samples', [])
    sample_rows = ''.join(
        f'<tr><td>{e(s["image_id"])}</td><td><b>{e(s["caption"])}</b></td>'
        f'<td>{e(s.get("beam_caption", "—"))}</td>'
        f'<td>{"<br>".join(e(r) for r in s["references"])}</td></tr>'
        for s in samples
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Caption model report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}</style></head><body>
<h1>Caption model report</h1>
<p><b>{e(verdict)}</b></p>
<p>Model: <code>{e(report['model'])}</code></p>
<h2>Metrics (coco-caption toolkit, all references)</h2>
<table><tr><th>split</th><th>system</th>{''.join(f'<th>{n}</th>' for n in names)}
<th>loss</th></tr>{''.join(rows)}</table>
<p>Most frequent training caption: <i>{e(report.get('most_frequent_train_caption', ''))}</i></p>
{attributes_html}
<h2>Training</h2>{_svg_curves(curves)}
<h2>Models</h2><table>{size_rows}</table>
<h2>TFLite variants</h2>
<p>Caption agreement with the SavedModel on eval images, through the on-device image
loading; the smallest variant that agrees ships.</p>
<table><tr><th>variant</th><th>size</th><th>one image</th><th>agreement</th><th></th></tr>
{tflite_rows}</table>
<h2>Test images</h2><img src="data:image/png;base64,{_b64_png(sheet)}">
<table><tr><th>image</th><th>greedy</th><th>beam search</th><th>references</th></tr>{sample_rows}</table>
{attention_html}
</body></html>
"""


ATTENTION_IMAGES = 3
"""Test images whose attention maps the report draws: enough to judge, a page still short."""


def attention_model_dir(report: Mapping[str, Any], pushed: Mapping[str, Any]) -> str:
    """The SavedModel whose attention the report draws: the evaluated one, else the pushed copy.

    The page describes the evaluated model (`report['model']`, the Trainer's
    Model artifact); a blessed model's push is a copy of that same export. The
    latest push is only the fallback: when this model was not blessed it is an
    older model, whose maps would not match the metrics above them.
    """
    evaluated = path_utils.serving_model_path(report['model'])
    if tf.io.gfile.exists(os.path.join(evaluated, 'saved_model.pb')) or not pushed.get(
        'saved_model'
    ):
        return evaluated
    return pushed['saved_model']


def saved_model_signatures(saved_model_dir: str) -> List[str]:
    """The signature names of a SavedModel, read from its graph file without loading it.

    Loading a captioner builds InceptionV3 (seconds, hundreds of MB); reading
    the names first keeps the report as fast as before for models without maps.

    Raises:
      FileNotFoundError: `saved_model_dir` holds no saved_model.pb.
    """
    path = os.path.join(saved_model_dir, 'saved_model.pb')
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f'no SavedModel at {saved_model_dir}')
    with tf.io.gfile.GFile(path, 'rb') as f:
        saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    return sorted({name for graph in saved_model.meta_graphs for name in graph.signature_def})


def attention_captions(
    saved_model_dir: str, images: List[Tuple[str, bytes]]
) -> List[attention_maps.AttentionCaption]:
    """Captions `images` with the model's `ATTENTION_SIGNATURE`, keeping each word's attention.

    Args:
      saved_model_dir: an attention model's SavedModel.
      images: (image_id, encoded image) pairs, e.g. `first_images`' output.

    Raises:
      KeyError: the model has no `ATTENTION_SIGNATURE`.
    """
    if not images:
        return []
    loaded = tf.saved_model.load(saved_model_dir)  # kept alive while its signature runs
    signature = loaded.signatures[features.ATTENTION_SIGNATURE]
    outputs = signature(
        **{features.IMAGE_BYTES_INPUT: tf.constant([data for _, data in images], tf.string)}
    )
    captions = outputs[features.CAPTION_OUTPUT].numpy()
    lengths = outputs[features.LENGTH_OUTPUT].numpy()
    attention = outputs[features.ATTENTION_OUTPUT].numpy()
    return [
        attention_maps.AttentionCaption(
            image_id=image_id,
            image_bytes=data,
            caption=captions[i].decode('utf-8'),
            attention=attention[i],
            length=int(lengths[i]),
        )
        for i, (image_id, data) in enumerate(images)
    ]


def attention_html(
    report: Mapping[str, Any],
    pushed: Mapping[str, Any],
    raw_examples_uri: Optional[str],
    count: int = ATTENTION_IMAGES,
) -> str:
    """`attention_section` for the first `count` test images; '' for a model without maps.

    Never raises: a model that cannot be read or run costs only this section,
    which then says why in one line.
    """
    try:
        model_dir = attention_model_dir(report, pushed)
        if features.ATTENTION_SIGNATURE not in saved_model_signatures(model_dir):
            return ''  # an init-inject model: nothing to draw
        if not raw_examples_uri:
            return attention_maps.attention_section([], 'no test images in ML Metadata')
        images = first_images(raw_examples_uri, features.TEST_SPLIT, count)
        if not images:
            return attention_maps.attention_section([], 'the test split has no images')
        return attention_maps.attention_section(attention_captions(model_dir, images))
    except Exception as error:  # TF and Pillow raise many types for a bad model or image.
        first_line = (str(error).strip().splitlines() or [''])[0][:300]
        return attention_maps.attention_section([], f'{type(error).__name__}: {first_line}')


def build_report(
    paths, output_dir: Optional[str] = None, data_root: Optional[str] = None
) -> Dict[str, str]:
    """Writes index.html and contact_sheet.png for the latest run; returns their paths.

    Args:
      paths: `configs.LocalPaths` of the run.
      output_dir: where to write; `<output_root>/report` by default.
      data_root: the run's data directory, for the sample data's truth file;
        by default the ExampleGen's `input_base` from ML Metadata.

    Raises:
      FileNotFoundError: the run has no evaluation yet.
    """
    store = summary.open_store(paths.metadata_path)
    evaluation = summary.latest_artifact(store, 'ModelEvaluation')
    if evaluation is None:
        raise FileNotFoundError('No model evaluation in this run yet: run the pipeline first.')
    with tf.io.gfile.GFile(os.path.join(evaluation.uri, evaluator_spec.METRICS_FILE)) as f:
        report = json.load(f)
    pushed = summary.latest_pushed(store)
    sizes = {
        'SavedModel': directory_size(pushed['saved_model']) if pushed.get('saved_model') else None,
        f'TFLite ({pushed.get("tflite_variant") or "none shipped"})': (
            tf.io.gfile.stat(pushed['tflite']).length if pushed.get('tflite') else None
        ),
    }
    model_run = summary.latest_artifact(store, 'ModelRun')
    curves = loss_curves(model_run.uri) if model_run is not None else {}
    samples = report['splits'].get(features.TEST_SPLIT, {}).get('samples', [])
    raw = summary.raw_examples(store)
    images = (
        read_images(raw.uri, features.TEST_SPLIT, [s['image_id'] for s in samples]) if raw else {}
    )
    sheet = contact_sheet(samples, images)
    try:
        attributes_html = attribute_section(summary.known_truth_accuracy(store, data_root))
    except ValueError as error:  # a bad truth file must not cost the rest of the report
        attributes_html = attribute_section(None, str(error))
    maps_html = attention_html(report, pushed, raw.uri if raw else None)
    output_dir = output_dir or os.path.join(paths.output_root, 'report')
    tf.io.gfile.makedirs(output_dir)
    sheet_path = os.path.join(output_dir, 'contact_sheet.png')
    sheet.save(sheet_path)
    html_path = os.path.join(output_dir, 'index.html')
    with open(html_path, 'w', encoding='utf-8') as f:
        f.write(
            render_html(
                report,
                curves,
                sizes,
                sheet,
                pushed.get('tflite_variant'),
                attributes_html,
                maps_html,
            )
        )
    return {'html': html_path, 'contact_sheet': sheet_path}


def first_images(raw_examples_uri: str, split: str, count: int) -> List[Tuple[str, bytes]]:
    """The first `count` (image_id, bytes) of a split of ExampleGen's output."""
    files = sorted(tf.io.gfile.glob(os.path.join(raw_examples_uri, f'Split-{split}', '*')))
    out = []
    for record in tf.data.TFRecordDataset(files, compression_type='GZIP').take(count):
        example = tf.train.Example.FromString(record.numpy()).features.feature
        out.append(
            (
                example[features.IMAGE_ID_KEY].bytes_list.value[0].decode('utf-8'),
                example[features.IMAGE_KEY].bytes_list.value[0],
            )
        )
    return out
