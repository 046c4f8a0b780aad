"""The extractor's compute precision: CPU detection, 'auto', bfloat16 features, the record of it."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import feature_extractor_fixtures as fx
from tfx_captioning.components.image_feature_extractor import executor, spec
from tfx_captioning.models import encoder, features, image_preprocessing

X86_FLAGS = (
    'fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov sse sse2 ht syscall nx '
    'lm constant_tsc rep_good nopl xtopology cpuid pni ssse3 fma cx16 sse4_1 sse4_2 avx f16c '
    'avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni'
)


def cpuinfo(*flag_lines: str) -> str:
    """A /proc/cpuinfo text with one processor per flags line."""
    return '\n\n'.join(
        f'processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Some CPU\nflags\t\t: {flags}\n'
        f'bugs\t\t: spectre_v1'
        for n, flags in enumerate(flag_lines)
    )


@pytest.mark.parametrize(
    'text,native',
    [
        (
            cpuinfo(X86_FLAGS + ' avx512_bf16', X86_FLAGS + ' avx512_bf16'),
            True,
        ),  # Zen 4, Cooper Lake
        (cpuinfo(X86_FLAGS + ' amx_bf16 amx_tile amx_int8'), True),  # Sapphire Rapids
        (cpuinfo(X86_FLAGS), False),  # AVX-512 without BF16 (Skylake, Ice Lake)
        (cpuinfo('fpu sse sse2 avx avx2 fma'), False),  # AVX2 only
        (cpuinfo(X86_FLAGS + ' avx512_bf16', X86_FLAGS), False),  # hybrid: one core lacks it
        (cpuinfo(X86_FLAGS + ' avx512_bf16x amx_bf16_other'), False),  # whole words only
        ('processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n', False),
        ('', False),  # no /proc/cpuinfo
        ('garbage without colons\n\n', False),
    ],
)
def test_native_bf16_is_read_from_the_flags_of_every_processor(text, native):
    assert encoder.has_native_bf16(text) is native


def test_auto_resolves_by_the_cpu_and_explicit_choices_pass_through():
    with_bf16 = cpuinfo(X86_FLAGS + ' avx512_bf16')
    without = cpuinfo(X86_FLAGS)

    assert encoder.resolve_precision('auto', with_bf16) == 'bfloat16'
    assert encoder.resolve_precision('auto', without) == 'float32'
    assert encoder.resolve_precision('bfloat16', without) == 'bfloat16'
    assert encoder.resolve_precision('float32', with_bf16) == 'float32'
    with pytest.raises(ValueError, match='auto'):
        encoder.resolve_precision('fp16', with_bf16)


def test_auto_on_this_machine_follows_its_cpuinfo_flags():
    flag_lines = [
        line.split(':', 1)[1].split()
        for line in encoder.read_cpuinfo().splitlines()
        if line.startswith('flags')
    ]
    native = bool(flag_lines) and all(
        'avx512_bf16' in flags or 'amx_bf16' in flags for flags in flag_lines
    )

    assert encoder.resolve_precision('auto') == ('bfloat16' if native else 'float32')


def test_a_missing_cpuinfo_reads_as_empty(tmp_path):
    assert encoder.read_cpuinfo(str(tmp_path / 'no-such-file')) == ''


# --- bfloat16 features -------------------------------------------------------------------------


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    return fx.sample_jpegs(str(tmp_path_factory.mktemp('sample')), 6)


@pytest.fixture(scope='module')
def random_encoder():
    return encoder.build_inception_encoder(encoder.WEIGHTS_RANDOM)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float((np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def test_bfloat16_features_are_float32_and_close_to_float32_ones(images, random_encoder):
    model = random_encoder
    pixels = image_preprocessing.preprocess_batch(tf.constant([data for _, data in images]))

    float32 = executor.EncoderRunner(model, 'float32').encode(pixels.numpy())
    bfloat16 = executor.EncoderRunner(model, 'bfloat16').encode(pixels.numpy())

    assert bfloat16.dtype == np.float32 and bfloat16.shape == (6, features.FEATURE_SIZE)
    assert np.all(np.isfinite(bfloat16))
    assert min_cosine(bfloat16, float32) >= 0.999
    assert not np.array_equal(bfloat16, float32)  # it really computed in bfloat16
    # The float32 model is untouched: the bfloat16 one is a copy.
    assert model.dtype_policy.name == 'float32'


def test_with_precision_refuses_an_unresolved_precision(random_encoder):
    with pytest.raises(ValueError, match='auto'):
        encoder.with_precision(random_encoder, 'auto')


def test_the_choice_is_recorded_in_the_spec_and_on_both_artifacts(images, tmp_path):
    examples = fx.write_examples(
        str(tmp_path / 'examples'),
        {'train': [fx.input_example(i, data, ['a caption']) for i, data in images[:4]]},
    )
    float32_run = fx.run_extractor(examples, str(tmp_path / 'f32'), batch_size=4)
    feature_examples, encoder_artifact = fx.run_extractor(
        examples, str(tmp_path / 'bf16'), batch_size=4, encoder_precision='bfloat16'
    )

    with open(os.path.join(encoder_artifact.uri, encoder.MODEL_DIR, encoder.SPEC_FILE)) as f:
        written = json.load(f)
    assert written['requested_precision'] == 'bfloat16' and written['precision'] == 'bfloat16'
    for artifact in (feature_examples, encoder_artifact):
        assert artifact.get_string_custom_property(executor.ENCODER_PRECISION_PROPERTY) == (
            'bfloat16'
        )
        assert artifact.get_string_custom_property(executor.REQUESTED_PRECISION_PROPERTY) == (
            'bfloat16'
        )
    report = json.loads(feature_examples.get_string_custom_property(executor.REPORT_PROPERTY))
    assert report['encoder_precision'] == 'bfloat16'
    # Same weights either way (bfloat16 is compute only), features within bfloat16 rounding.
    assert encoder.read_encoder_spec(encoder_artifact.uri).weights_fingerprint == (
        encoder.read_encoder_spec(float32_run[1].uri).weights_fingerprint
    )
    bf16 = fx.feature_vectors(feature_examples, 'train')
    f32 = fx.feature_vectors(float32_run[0], 'train')
    ids = sorted(f32)
    assert sorted(bf16) == ids
    assert min_cosine(np.stack([bf16[i] for i in ids]), np.stack([f32[i] for i in ids])) >= 0.999
    # The model the Trainer gets is float32 whatever the extractor computed in.
    assert encoder.load_encoder(encoder_artifact.uri).dtype_policy.name == 'float32'


def test_auto_is_recorded_with_what_it_resolved_to(images, tmp_path):
    examples = fx.write_examples(
        str(tmp_path / 'examples'),
        {'train': [fx.input_example(i, data, ['a caption']) for i, data in images[:2]]},
    )
    _, encoder_artifact = fx.run_extractor(
        examples, str(tmp_path / 'auto'), batch_size=2, encoder_precision='auto'
    )

    spec_written = encoder.read_encoder_spec(encoder_artifact.uri)
    assert spec_written.requested_precision == 'auto'
    assert spec_written.precision == encoder.resolve_precision('auto')


def test_workers_that_load_the_artifact_compute_in_its_precision(random_encoder, tmp_path):
    uri = str(tmp_path / 'encoder')
    encoder.save_encoder(
        random_encoder, uri, 'random', 0, requested_precision='auto', precision='bfloat16'
    )

    runner = executor.EncoderRunner.load(uri)

    assert runner.precision == 'bfloat16'
    assert runner.model.dtype_policy.name == 'mixed_bfloat16'


def test_specs_written_before_precisions_read_as_float32(random_encoder, tmp_path):
    uri = str(tmp_path / 'encoder')
    encoder.save_encoder(random_encoder, uri, 'random', 0)
    path = os.path.join(uri, encoder.MODEL_DIR, encoder.SPEC_FILE)
    with open(path) as f:
        old = json.load(f)
    del old['requested_precision'], old['precision']
    with open(path, 'w') as f:
        json.dump(old, f)

    assert encoder.read_encoder_spec(uri).precision == 'float32'
    assert executor.EncoderRunner.load(uri).precision == 'float32'


def test_parameters_round_trip_the_precision():
    parameters = spec.ExtractorParameters(weights='random', encoder_precision='auto')
    assert spec.ExtractorParameters.from_exec_properties(parameters.to_exec_properties()) == (
        parameters
    )
    assert spec.ExtractorParameters().encoder_precision == 'float32'
