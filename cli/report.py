"""The evaluation report: an HTML page and a PNG contact sheet of test images.

Everything comes from the latest run's artifacts in ML Metadata: the
evaluator's metrics.json (coco-caption metrics, loss, sample captions with their
references, the most-frequent-caption baseline, the blessing decision, each
TFLite variant's size, latency and agreement),
the Trainer's TensorBoard logs (loss curves), the pushed SavedModel and TFLite
file (sizes) and the ExampleGen's test images. The HTML is self-contained
(images inlined), so it can be mailed or attached to a review.
"""

import base64
import html
import io
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from tfx_captioning.cli import summary
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
    out = io.BytesIO()
    image.save(out, format='PNG')
    return base64.b64encode(out.getvalue()).decode('ascii')


def _milliseconds(value: Optional[float]) -> str:
    return '—' if value is None else f'{value:.0f} ms'


def render_html(
    report: Dict[str, Any],
    curves: Dict[str, List[Tuple[int, float]]],
    sizes: Dict[str, Optional[int]],
    sheet: Image.Image,
    shipped: Optional[str] = None,
) -> str:
    """The report page as a string (pure: easy to test)."""
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
<h2>Training</h2>{_svg_curves(curves)}
<h2>Models</h2><table>{size_rows}</table>
<h2>TFLite variants</h2>
<p>Caption agreement with the SavedModel on eval images, through the on-device image
loading; the smallest variant that agrees ships.</p>
<table><tr><th>variant</th><th>size</th><th>one image</th><th>agreement</th><th></th></tr>
{tflite_rows}</table>
<h2>Test images</h2><img src="data:image/png;base64,{_b64_png(sheet)}">
<table><tr><th>image</th><th>greedy</th><th>beam search</th><th>references</th></tr>{sample_rows}</table>
</body></html>
"""


def build_report(paths, output_dir: Optional[str] = None) -> Dict[str, str]:
    """Writes index.html and contact_sheet.png for the latest run; returns their paths.

    Args:
      paths: `configs.LocalPaths` of the run.
      output_dir: where to write; `<output_root>/report` by default.

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
    output_dir = output_dir or os.path.join(paths.output_root, 'report')
    tf.io.gfile.makedirs(output_dir)
    sheet_path = os.path.join(output_dir, 'contact_sheet.png')
    sheet.save(sheet_path)
    html_path = os.path.join(output_dir, 'index.html')
    with open(html_path, 'w', encoding='utf-8') as f:
        f.write(render_html(report, curves, sizes, sheet, pushed.get('tflite_variant')))
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
