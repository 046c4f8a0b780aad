"""The known-truth attribute check: the generator's truth, the scoring, the summary and report.

The scoring is checked on hand-made captions whose right answers are counted
by hand; the truth on real `generate` output, against the reference captions
the generator wrote from the same scenes; the summary and report on a real
SQLite ML Metadata store laid out as a run leaves it (an ExampleGen execution
with its `input_base`, its Examples, an evaluation directory with captions.json).
"""

import json
import os

import pytest
from ml_metadata.proto import metadata_store_pb2

from tests import mlmd_fixtures
from tfx_captioning.cli import attributes, pipeline_cli, sample_data, summary
from tfx_captioning.components.caption_evaluator import spec as evaluator_spec
from tfx_captioning.components.flickr8k_example_gen import executor as example_gen_executor
from tfx_captioning.components.flickr8k_example_gen import layout
from tfx_captioning.models import features
from tfx_captioning.pipeline import configs

RED_CIRCLE = {
    'colour': 'red',
    'shape': 'circle',
    'size': 'small',
    'position': 'middle',
    'background': 'grey',
}

# --- Words ------------------------------------------------------------------------------


def test_every_generator_value_has_words_and_no_word_names_two_values():
    assert {a: tuple(v) for a, v in attributes.ATTRIBUTE_WORDS.items()} == {
        a: tuple(sample_data.ATTRIBUTE_VALUES[a]) for a in sample_data.ATTRIBUTES
    }
    seen = {}
    for attribute, values in attributes.ATTRIBUTE_WORDS.items():
        for value, words in values.items():
            assert value in words
            for word in words:
                assert attributes.words(word) == (word,), word  # one word each
                assert word not in seen, (word, seen.get(word), (attribute, value))
                seen[word] = (attribute, value)


def test_named_values_reads_words_not_substrings_and_synonyms():
    named = attributes.named_values('A small RED circle, in the centre; drawn on gray.')
    assert named == {
        'colour': {'red'},
        'shape': {'circle'},
        'size': {'small'},
        'position': {'middle'},
        'background': {'grey'},
    }
    # 'reddish' and 'squares' are other words; 'bigger' is not 'big'.
    assert attributes.named_values('a reddish bigger squares') == {
        a: set() for a in sample_data.ATTRIBUTES
    }


# --- Scoring ----------------------------------------------------------------------------


def test_attribute_accuracy_counts_right_named_and_wrong_by_hand():
    truth = {f'{n}.jpg': dict(RED_CIRCLE) for n in range(4)}
    truth['only_in_truth.jpg'] = dict(RED_CIRCLE)
    captions = {
        # Colour, shape and position right; size and background not named.
        '0.jpg': 'A red circle in the middle.',
        # Two colours: named, but not right. Big is the wrong size.
        '1.jpg': 'a big red and blue circle on the left',
        # Everything right, through synonyms and capitals.
        '2.jpg': 'A small Red circle in the center, drawn on GRAY.',
        # Wrong shape; nothing else named.
        '3.jpg': 'a square',
        'only_captioned.jpg': 'a red circle',
    }
    accuracy = attributes.attribute_accuracy(captions, truth)
    assert accuracy == {
        'colour': {'correct': 2 / 4, 'named': 3 / 4, 'images': 4},
        'shape': {'correct': 3 / 4, 'named': 4 / 4, 'images': 4},
        'size': {'correct': 1 / 4, 'named': 2 / 4, 'images': 4},
        'position': {'correct': 2 / 4, 'named': 3 / 4, 'images': 4},
        'background': {'correct': 1 / 4, 'named': 1 / 4, 'images': 4},
    }


def test_no_image_in_both_is_an_error():
    with pytest.raises(ValueError, match='none of the 1 captioned images'):
        attributes.attribute_accuracy({'a.jpg': 'a red circle'}, {'b.jpg': dict(RED_CIRCLE)})


def test_accuracy_by_decoding_scores_each_decoding_present():
    truth = {'a.jpg': dict(RED_CIRCLE), 'b.jpg': dict(RED_CIRCLE, colour='blue')}
    captions = {
        'a.jpg': {'greedy': 'a red circle', 'beam': 'a blue circle'},
        'b.jpg': {'greedy': 'a red circle', 'beam': 'a blue circle'},
    }
    accuracy = attributes.accuracy_by_decoding(captions, truth)
    assert list(accuracy) == ['greedy', 'beam']
    assert accuracy['greedy']['colour']['correct'] == 0.5
    assert accuracy['beam']['colour']['correct'] == 0.5
    assert accuracy['beam']['shape']['correct'] == 1.0
    greedy_only = attributes.accuracy_by_decoding(
        {i: {'greedy': c['greedy']} for i, c in captions.items()}, truth
    )
    assert list(greedy_only) == ['greedy']


def test_the_table_shows_right_and_named_per_decoding():
    row = {'correct': 0.975, 'named': 1.0, 'images': 40}
    accuracy = {
        'greedy': {a: dict(row) for a in sample_data.ATTRIBUTES},
        'beam': {a: dict(row, correct=0.625) for a in sample_data.ATTRIBUTES},
    }
    table = attributes.format_attribute_table(accuracy).splitlines()
    assert table[0] == 'Attributes named right in 40 test captions (right / named at all):'
    assert table[1].split() == ['attribute', 'greedy', 'beam']
    assert table[2].split() == ['colour', '97.5%', '/', '100.0%', '62.5%', '/', '100.0%']
    assert [line.split()[0] for line in table[2:]] == list(sample_data.ATTRIBUTES)


# --- The truth the generator writes ----------------------------------------------------


def test_truth_round_trip_agrees_with_the_reference_captions(tmp_path):
    sample_data.generate(str(tmp_path), 16, seed=3)
    truth = attributes.read_truth(str(tmp_path))
    images = sorted(os.listdir(tmp_path / layout.IMAGES_DIR))
    assert list(truth) == images  # every image, sorted by file name
    with open(tmp_path / sample_data.ATTRIBUTES_FILE, encoding='utf-8') as f:
        assert f.readline() == 'image\tcolour\tshape\tsize\tposition\tbackground\n'
    references, _ = layout.parse_token_lines(layout.read_lines(str(tmp_path / layout.TOKEN_FILE)))
    assert references.keys() == truth.keys()
    for image_id, captions in references.items():
        for caption in captions:
            named = attributes.named_values(caption)
            # A reference never names a wrong value ...
            assert all(v <= {truth[image_id][a]} for a, v in named.items()), (image_id, caption)
            # ... and every one names the true colour and shape.
            assert named['colour'] == {truth[image_id]['colour']}, (image_id, caption)
            assert named['shape'] == {truth[image_id]['shape']}, (image_id, caption)
    # The five references together name every attribute right.
    joined = {i: ' '.join(c) for i, c in references.items()}
    accuracy = attributes.attribute_accuracy(joined, truth)
    assert all(a['correct'] == 1.0 for a in accuracy.values()), accuracy
    # The layout checks read past the extra file.
    layout.check_layout(str(tmp_path))
    assert all(v == 0 for v in layout.load_plan(str(tmp_path)).skipped.values())


def test_no_truth_file_is_none_and_a_bad_one_is_an_error(tmp_path):
    assert attributes.read_truth(str(tmp_path)) is None  # real Flickr8k
    sample_data.generate(str(tmp_path), 8, seed=0)
    path = tmp_path / sample_data.ATTRIBUTES_FILE
    lines = path.read_text().splitlines()
    fields = lines[1].split('\t')
    fields[1] = 'purple'
    path.write_text('\n'.join([lines[0], '\t'.join(fields), *lines[2:]]) + '\n')
    with pytest.raises(ValueError, match="line 2: 'purple' is not a colour"):
        attributes.read_truth(str(tmp_path))
    path.write_text('image\tcolour\n')
    with pytest.raises(ValueError, match='header'):
        attributes.read_truth(str(tmp_path))


# --- The summary and the report, from a run's ML Metadata ------------------------------

_METRICS = {
    'model': 'Trainer/model/1',
    'blessed': False,
    'failures': ['a test gate'],
    'decoding': 'greedy',
    'splits': {
        features.TEST_SPLIT: {
            'metrics': {**{n: 0.5 for n in features.METRIC_NAMES}, 'loss': 1.0},
            'samples': [],
        }
    },
    'tflite': [],
}


def _wrong_colour(caption: str, colour: str) -> str:
    other = next(c for c in sample_data.COLOURS if c != colour)
    return caption.replace(colour, other)


def _record_run(tmp_path, data_root: str):
    """A store as a run leaves it; returns (paths, the test captions written)."""
    paths = configs.LocalPaths(str(tmp_path / 'out'))
    os.makedirs(os.path.dirname(paths.metadata_path))
    store = mlmd_fixtures.Store(paths.metadata_path).store
    examples_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name='Examples'))
    evaluation_type = store.put_artifact_type(
        metadata_store_pb2.ArtifactType(name='ModelEvaluation')
    )
    example_gen_type = store.put_execution_type(
        metadata_store_pb2.ExecutionType(name='Flickr8kExampleGen')
    )
    execution = metadata_store_pb2.Execution(
        type_id=example_gen_type, last_known_state=metadata_store_pb2.Execution.COMPLETE
    )
    execution.custom_properties['input_base'].string_value = data_root
    examples = metadata_store_pb2.Artifact(
        type_id=examples_type,
        uri=str(tmp_path / 'examples'),
        state=metadata_store_pb2.Artifact.LIVE,
    )
    examples.custom_properties[example_gen_executor.REPORT_PROPERTY].string_value = json.dumps(
        {'examples': {'test': 3}, 'skipped': {}}
    )
    store.put_execution(
        execution, [(examples, metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT))], []
    )

    # Greedy: the first reference (colour, shape, position), one colour wrong.
    # Beam: the fourth (size, colour, shape, background; no position).
    references, _ = layout.parse_token_lines(layout.read_lines(f'{data_root}/{layout.TOKEN_FILE}'))
    test_ids = [r.image_id for r in layout.load_plan(data_root).splits[features.TEST_SPLIT]]
    truth = attributes.read_truth(data_root) or {}
    captions = {
        image_id: {'greedy': references[image_id][0], 'beam': references[image_id][3]}
        for image_id in test_ids
    }
    first = captions[test_ids[0]]
    first['greedy'] = _wrong_colour(first['greedy'], truth.get(test_ids[0], RED_CIRCLE)['colour'])
    evaluation_dir = tmp_path / 'evaluation'
    evaluation_dir.mkdir()
    (evaluation_dir / evaluator_spec.METRICS_FILE).write_text(json.dumps(_METRICS))
    (evaluation_dir / evaluator_spec.CAPTIONS_FILE).write_text(
        json.dumps({features.TEST_SPLIT: captions})
    )
    store.put_artifacts(
        [
            metadata_store_pb2.Artifact(
                type_id=evaluation_type,
                uri=str(evaluation_dir),
                state=metadata_store_pb2.Artifact.LIVE,
            )
        ]
    )
    return paths, captions


@pytest.fixture
def sample_root(tmp_path):
    root = str(tmp_path / 'data')
    sample_data.generate(root, 24, seed=0)  # 3 test images
    return root


def test_the_summary_finds_the_data_root_and_the_captions_in_ml_metadata(tmp_path, sample_root):
    paths, captions = _record_run(tmp_path, sample_root)
    store = summary.open_store(paths.metadata_path)
    assert summary.input_base(store) == sample_root
    assert summary.evaluation_captions(store) == {features.TEST_SPLIT: captions}
    accuracy = summary.known_truth_accuracy(store)
    assert accuracy['greedy']['colour'] == {'correct': 2 / 3, 'named': 1.0, 'images': 3}
    assert accuracy['greedy']['position'] == {'correct': 1.0, 'named': 1.0, 'images': 3}
    assert accuracy['greedy']['size'] == {'correct': 0.0, 'named': 0.0, 'images': 3}
    assert accuracy['beam']['background'] == {'correct': 1.0, 'named': 1.0, 'images': 3}
    assert accuracy['beam']['position'] == {'correct': 0.0, 'named': 0.0, 'images': 3}
    # A data root given by the caller wins over ML Metadata's.
    assert summary.known_truth_accuracy(store, str(tmp_path)) is None


def test_print_summary_and_report_show_the_table_on_sample_data(tmp_path, sample_root, capsys):
    paths, _ = _record_run(tmp_path, sample_root)
    pipeline_cli.print_summary(paths)
    out = capsys.readouterr().out
    assert 'Attributes named right in 3 test captions (right / named at all):' in out
    colour = next(line for line in out.splitlines() if line.startswith('colour '))
    assert colour.split() == ['colour', '66.7%', '/', '100.0%', '100.0%', '/', '100.0%']
    position = next(line for line in out.splitlines() if line.startswith('position '))
    assert position.split() == ['position', '100.0%', '/', '100.0%', '0.0%', '/', '0.0%']
    html_path = os.path.join(paths.output_root, 'report', 'index.html')
    assert f'Report: {html_path}' in out
    page = open(html_path, encoding='utf-8').read()
    assert '<th>greedy</th><th>beam search</th>' in page
    assert '<tr><td>colour</td><td>66.7% <small>(100.0% named)</small></td>' in page


def test_print_summary_is_silent_without_truth_and_says_why_on_a_bad_one(
    tmp_path, sample_root, capsys
):
    paths, _ = _record_run(tmp_path, sample_root)
    truth_path = os.path.join(sample_root, sample_data.ATTRIBUTES_FILE)
    os.rename(truth_path, truth_path + '.away')  # now laid out as real Flickr8k
    pipeline_cli.print_summary(paths)
    out = capsys.readouterr().out
    assert 'Attribute' not in out and 'BLEU-4' in out
    page = open(os.path.join(paths.output_root, 'report', 'index.html'), encoding='utf-8').read()
    assert 'known truth' not in page

    with open(truth_path, 'w', encoding='utf-8') as f:
        f.write('not a header\n')
    pipeline_cli.print_summary(paths)
    out = capsys.readouterr().out
    assert 'Attribute check skipped: ' in out and 'the header must be' in out
    page = open(os.path.join(paths.output_root, 'report', 'index.html'), encoding='utf-8').read()
    assert 'Not checked: ' in page
