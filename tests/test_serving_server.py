"""The local stand-in server over real gRPC on loopback: status codes, limits, versions.

Every bad request gets TF Serving's status code and the server keeps answering
valid requests afterwards. Runs against the TEST FIXTURE caption model from
conftest (the real model drops in unchanged: the server reads signature defs).
"""

import re
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import file_system_storage_path_source_pb2

from tfx_captioning.models import features
from tfx_captioning.pipeline import configs
from tfx_captioning.serving import batching, options, protocol, servable
from tfx_captioning.serving.fixture_model import fixture_serving_images, publish_fixture_version

pytestmark = pytest.mark.timeout(120)

_MAX_MESSAGE_BYTES = 2 * 1024 * 1024


def wait_for_version(manager, version: int, timeout_s: float) -> bool:
    """Blocks until `manager` serves `version` or `timeout_s` passes; True if served."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if version in manager.served_versions:
            return True
        time.sleep(0.02)
    return version in manager.served_versions


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with no pixel data: a decompression bomb."""
    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    chunk = b'IHDR' + header
    ihdr = struct.pack('>I', len(header)) + chunk + struct.pack('>I', zlib.crc32(chunk))
    iend = struct.pack('>I', 0) + b'IEND' + struct.pack('>I', zlib.crc32(b'IEND'))
    return b'\x89PNG\r\n\x1a\n' + ihdr + iend


def _request(images=None, *, name=configs.MODEL_NAME, signature='', inputs=None, version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.CopyFrom(
        protocol.model_spec(name, version=version, signature_name=signature)
    )
    if images is not None:
        request.inputs[features.IMAGE_BYTES_INPUT].CopyFrom(protocol.string_tensor_proto(images))
    for alias, proto in (inputs or {}).items():
        request.inputs[alias].CopyFrom(proto)
    return request


def _float_tensor(shape) -> tensor_pb2.TensorProto:
    return protocol.ndarray_to_tensor_proto(np.zeros(shape, np.float32))


def _call(stub_method, request, timeout=20):
    """(status code, details, response) of one RPC; never raises for an RPC error."""
    try:
        return grpc.StatusCode.OK, '', stub_method(request, timeout=timeout)
    except grpc.RpcError as error:
        return error.code(), error.details(), None


@pytest.fixture(scope='module')
def images():
    return fixture_serving_images()


@pytest.fixture(scope='module')
def module_base_path(tmp_path_factory, fixture_caption_models):
    base_path = str(tmp_path_factory.mktemp('server_module') / configs.MODEL_NAME)
    publish_fixture_version(fixture_caption_models['picture'], base_path, 1)
    return base_path


@pytest.fixture(scope='module')
def shared_server(module_base_path):
    """One server for the fault table (module scope: each fault costs milliseconds, not a load)."""
    from tfx_captioning.serving import server

    caption_server = server.CaptionServer.for_model(
        configs.MODEL_NAME,
        module_base_path,
        server.ServerOptions(
            port=0,
            max_message_bytes=_MAX_MESSAGE_BYTES,
            image_limits=servable.ImageLimits(max_image_pixels=1_000_000),
        ),
    )
    caption_server.start()
    yield caption_server
    caption_server.stop(grace_s=0.5)


@pytest.fixture(scope='module')
def stubs(shared_server):
    channel = grpc.insecure_channel(shared_server.target)
    yield (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )
    channel.close()


def _fault_cases(images):
    photo = images['photo.jpg']
    wrong_shape = protocol.string_tensor_proto([photo])
    wrong_shape.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)] * 2)
    )
    inconsistent = protocol.string_tensor_proto([photo])
    inconsistent.tensor_shape.dim[0].size = 3
    unknown_label = _request([photo])
    unknown_label.model_spec.version_label = 'no-such-label'
    bad_filter = _request([photo])
    bad_filter.output_filter.append('no_such_output')
    return {
        'corrupt image': (_request([b'\x00garbage' * 10]), grpc.StatusCode.INVALID_ARGUMENT),
        'empty image': (_request([b'']), grpc.StatusCode.INVALID_ARGUMENT),
        'truncated jpeg': (
            _request([photo[: len(photo) // 3]]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        'tiff (not decodable by the graph)': (
            _request([_tiff(images)]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        'one bad image among good ones': (
            _request([photo, b'not an image', photo]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        'empty request': (_request(), grpc.StatusCode.INVALID_ARGUMENT),
        'zero images': (_request([]), grpc.StatusCode.INVALID_ARGUMENT),
        'huge image header (bomb)': (
            _request([_png_header_only(100_000, 100_000)]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        'over the pixel limit': (
            _request([_png_header_only(2000, 1000)]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        'unknown model': (_request([photo], name='no-such-model'), grpc.StatusCode.NOT_FOUND),
        'missing model name': (_request([photo], name=''), grpc.StatusCode.INVALID_ARGUMENT),
        'unknown version': (_request([photo], version=99), grpc.StatusCode.NOT_FOUND),
        'unknown version label': (unknown_label, grpc.StatusCode.INVALID_ARGUMENT),
        'unknown signature': (
            _request([photo], signature='no_such_signature'),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        'wrong input name': (
            _request(inputs={'images': protocol.string_tensor_proto([photo])}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        'extra input': (
            _request([photo], inputs={'extra': protocol.string_tensor_proto([photo])}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        'wrong dtype': (
            _request(inputs={features.IMAGE_BYTES_INPUT: _float_tensor([1])}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        'wrong rank': (
            _request(inputs={features.IMAGE_BYTES_INPUT: wrong_shape}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        'values do not fill the shape': (
            _request(inputs={features.IMAGE_BYTES_INPUT: inconsistent}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        'features signature, wrong width': (
            _request(
                signature=features.FEATURES_SIGNATURE,
                inputs={features.IMAGE_FEATURES_INPUT: _float_tensor([2, 10])},
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        'unknown output filter': (bad_filter, grpc.StatusCode.INVALID_ARGUMENT),
        'message over the size limit': (
            _request([b'x' * (_MAX_MESSAGE_BYTES + 1024)]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
    }


def _tiff(images) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(images['red.jpg'])).save(out, format='TIFF')
    return out.getvalue()


_FAULT_NAMES = list(_fault_cases(fixture_serving_images()))


@pytest.mark.parametrize('case', _FAULT_NAMES)
def test_bad_request_gets_tf_serving_code_and_server_keeps_answering(stubs, images, case):
    predictions, _ = stubs
    request, expected_code = _fault_cases(images)[case]
    code, details, _ = _call(predictions.Predict, request)
    assert code == expected_code, details
    assert details  # A readable reason, not an empty status.
    code, details, response = _call(predictions.Predict, _request([images['red.jpg']]))
    assert code == grpc.StatusCode.OK, details
    assert response.outputs[features.CAPTION_OUTPUT].string_val == [b'a red picture']


def test_status_messages_are_readable(stubs, images):
    predictions, _ = stubs
    # The reasons every runtime gives (models.image_files), with this server's lower limit.
    _, details, _ = _call(predictions.Predict, _request([b'not an image']))
    assert details == 'unsupported format: not a JPEG, PNG, GIF or BMP image'
    _, details, _ = _call(predictions.Predict, _request([_png_header_only(100_000, 100_000)]))
    assert details.startswith('too many pixels: PNG of 100000x100000')
    _, details, _ = _call(predictions.Predict, _request([_png_header_only(2000, 1000)]))
    assert details == (
        'too many pixels: PNG of 2000x1000 = 2,000,000 pixels, above the limit of 1,000,000'
    )
    truncated = images['photo.jpg'][: len(images['photo.jpg']) // 3]
    _, details, _ = _call(predictions.Predict, _request([truncated]))
    assert 'Detected at node' not in details and 'JPEG' in details


def test_huge_image_is_refused_from_its_header_without_decoding(
    shared_server, stubs, images, monkeypatch
):
    predictions, _ = stubs
    served = shared_server.managers[configs.MODEL_NAME].resolve()
    model_runs = []
    run = served.run

    def counted_run(*args, **kwargs):
        model_runs.append(args)
        return run(*args, **kwargs)

    monkeypatch.setattr(served, 'run', counted_run)
    bomb = _png_header_only(60_000, 60_000)  # 10.8 GB of RGB if it were decoded
    code, details, _ = _call(predictions.Predict, _request([bomb]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # The model (whose graph decodes) never saw the request...
    assert model_runs == []
    assert 'too many pixels' in details, details
    # ...while it does see a valid one.
    code, details, _ = _call(predictions.Predict, _request([images['red.jpg']]))
    assert code == grpc.StatusCode.OK, details
    assert len(model_runs) == 1


def test_predict_returns_the_model_contract(stubs, images):
    predictions, _ = stubs
    request = _request([images['red.jpg'], images['blue.png']])
    code, details, response = _call(predictions.Predict, request)
    assert code == grpc.StatusCode.OK, details
    assert response.model_spec.name == configs.MODEL_NAME
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == features.SERVING_SIGNATURE
    outputs = response.outputs
    assert set(outputs) == {
        features.CAPTION_OUTPUT,
        features.TOKEN_IDS_OUTPUT,
        features.LENGTH_OUTPUT,
    }
    assert outputs[features.CAPTION_OUTPUT].dtype == types_pb2.DT_STRING
    assert outputs[features.TOKEN_IDS_OUTPUT].dtype == types_pb2.DT_INT32
    assert outputs[features.LENGTH_OUTPUT].dtype == types_pb2.DT_INT32
    token_ids = protocol.tensor_proto_to_ndarray(outputs[features.TOKEN_IDS_OUTPUT])
    assert token_ids.shape == (2, features.MAX_LEN)
    assert list(outputs[features.CAPTION_OUTPUT].string_val) == [
        b'a red picture',
        b'a blue picture',
    ]


def test_output_filter_and_features_signature(stubs):
    predictions, _ = stubs
    request = _request(
        signature=features.FEATURES_SIGNATURE,
        inputs={features.IMAGE_FEATURES_INPUT: _float_tensor([3, features.FEATURE_SIZE])},
    )
    request.output_filter.append(features.CAPTION_OUTPUT)
    code, details, response = _call(predictions.Predict, request)
    assert code == grpc.StatusCode.OK, details
    assert list(response.outputs) == [features.CAPTION_OUTPUT]
    assert len(response.outputs[features.CAPTION_OUTPUT].string_val) == 3


def test_metadata_lists_signature_defs(stubs):
    predictions, _ = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=protocol.model_spec(configs.MODEL_NAME),
        metadata_field=[protocol.SIGNATURE_DEF_FIELD],
    )
    code, details, response = _call(predictions.GetModelMetadata, request)
    assert code == grpc.StatusCode.OK, details
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[protocol.SIGNATURE_DEF_FIELD].Unpack(signature_map)
    assert set(signature_map.signature_def) == {
        features.SERVING_SIGNATURE,
        features.FEATURES_SIGNATURE,
        features.BEAM_SIGNATURE,
        features.BEAM_FEATURES_SIGNATURE,
    }
    serving = signature_map.signature_def[features.SERVING_SIGNATURE]
    assert list(serving.inputs) == [features.IMAGE_BYTES_INPUT]
    assert serving.inputs[features.IMAGE_BYTES_INPUT].dtype == types_pb2.DT_STRING

    no_fields = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=protocol.model_spec(configs.MODEL_NAME)
    )
    assert _call(predictions.GetModelMetadata, no_fields)[0] == grpc.StatusCode.INVALID_ARGUMENT
    other_field = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=protocol.model_spec(configs.MODEL_NAME), metadata_field=['other']
    )
    assert _call(predictions.GetModelMetadata, other_field)[0] == grpc.StatusCode.INVALID_ARGUMENT
    unknown = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=protocol.model_spec('no-such-model'),
        metadata_field=[protocol.SIGNATURE_DEF_FIELD],
    )
    assert _call(predictions.GetModelMetadata, unknown)[0] == grpc.StatusCode.NOT_FOUND


def test_model_status(stubs):
    _, models = stubs
    request = get_model_status_pb2.GetModelStatusRequest(
        model_spec=protocol.model_spec(configs.MODEL_NAME)
    )
    code, details, response = _call(models.GetModelStatus, request)
    assert code == grpc.StatusCode.OK, details
    (status,) = response.model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0
    for spec, expected in (
        (protocol.model_spec('no-such-model'), grpc.StatusCode.NOT_FOUND),
        (protocol.model_spec(configs.MODEL_NAME, version=7), grpc.StatusCode.NOT_FOUND),
    ):
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
        assert _call(models.GetModelStatus, request)[0] == expected


def test_unimplemented_methods_answer_unimplemented(stubs):
    from tensorflow_serving.apis import classification_pb2

    predictions, _ = stubs
    request = classification_pb2.ClassificationRequest(
        model_spec=protocol.model_spec(configs.MODEL_NAME)
    )
    assert _call(predictions.Classify, request)[0] == grpc.StatusCode.UNIMPLEMENTED


def test_no_loadable_version_is_failed_precondition_until_one_is_pushed(
    tmp_path, fixture_caption_models, start_caption_server, images
):
    base_path = str(tmp_path / configs.MODEL_NAME)
    broken = tmp_path / configs.MODEL_NAME / '3'
    broken.mkdir(parents=True)
    (broken / 'saved_model.pb').write_bytes(b'not a saved model')
    caption_server = start_caption_server(base_path)
    channel = grpc.insecure_channel(caption_server.target)
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    models = model_service_pb2_grpc.ModelServiceStub(channel)

    code, details, _ = _call(predictions.Predict, _request([images['red.jpg']]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert 'failed to load' in details
    status_request = get_model_status_pb2.GetModelStatusRequest(
        model_spec=protocol.model_spec(configs.MODEL_NAME)
    )
    code, _, response = _call(models.GetModelStatus, status_request)
    assert code == grpc.StatusCode.OK
    (status,) = response.model_version_status
    assert status.version == 3 and status.status.error_message

    publish_fixture_version(fixture_caption_models['picture'], base_path, 4)
    assert wait_for_version(caption_server.managers[configs.MODEL_NAME], 4, timeout_s=30)
    code, details, response = _call(predictions.Predict, _request([images['red.jpg']]))
    assert code == grpc.StatusCode.OK, details
    assert response.model_spec.version.value == 4
    channel.close()


def test_requested_version_and_label_are_honoured(
    tmp_path, fixture_caption_models, start_caption_server, images
):
    base_path = str(tmp_path / configs.MODEL_NAME)
    publish_fixture_version(fixture_caption_models['picture'], base_path, 1)
    publish_fixture_version(fixture_caption_models['photo'], base_path, 2)
    policy = file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy()
    policy.latest.num_versions = 2
    caption_server = start_caption_server(
        base_path, version_policy=policy, version_labels={'stable': 1, 'canary': 2}
    )
    channel = grpc.insecure_channel(caption_server.target)
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def caption_of(request):
        code, details, response = _call(predictions.Predict, request)
        assert code == grpc.StatusCode.OK, details
        return response.model_spec.version.value, response.outputs[
            features.CAPTION_OUTPUT
        ].string_val[0].decode()

    red = images['red.jpg']
    assert caption_of(_request([red])) == (2, 'a red photo')
    assert caption_of(_request([red], version=1)) == (1, 'a red picture')
    stable = _request([red])
    stable.model_spec.version_label = 'stable'
    assert caption_of(stable) == (1, 'a red picture')
    canary = _request([red])
    canary.model_spec.version_label = 'canary'
    assert caption_of(canary) == (2, 'a red photo')
    channel.close()


def test_latest_policy_unloads_the_old_version(
    tmp_path, fixture_caption_models, start_caption_server, images
):
    base_path = str(tmp_path / configs.MODEL_NAME)
    publish_fixture_version(fixture_caption_models['picture'], base_path, 1)
    caption_server = start_caption_server(base_path)
    publish_fixture_version(fixture_caption_models['photo'], base_path, 2)
    manager = caption_server.managers[configs.MODEL_NAME]
    assert wait_for_version(manager, 2, timeout_s=30)
    channel = grpc.insecure_channel(caption_server.target)
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    code, _, _ = _call(predictions.Predict, _request([images['red.jpg']], version=1))
    assert code == grpc.StatusCode.NOT_FOUND
    states = {status.version: status.state for status in manager.statuses()}
    assert states == {
        2: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        1: get_model_status_pb2.ModelVersionStatus.END,
    }
    channel.close()


def test_a_broken_new_version_keeps_the_old_one_serving(
    tmp_path, fixture_caption_models, start_caption_server, images
):
    base_path = str(tmp_path / configs.MODEL_NAME)
    publish_fixture_version(fixture_caption_models['picture'], base_path, 1)
    caption_server = start_caption_server(base_path)
    (tmp_path / configs.MODEL_NAME / '2').mkdir()  # No saved_model.pb: cannot load.
    manager = caption_server.managers[configs.MODEL_NAME]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
        status.version == 2 and status.error_message for status in manager.statuses()
    ):
        time.sleep(0.05)
    channel = grpc.insecure_channel(caption_server.target)
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    code, details, response = _call(predictions.Predict, _request([images['red.jpg']]))
    assert code == grpc.StatusCode.OK, details
    assert response.model_spec.version.value == 1
    channel.close()


def test_server_deadline_applies_while_waiting_for_a_batch(
    fixture_model_base_path, start_caption_server, images
):
    caption_server = start_caption_server(
        fixture_model_base_path,
        request_timeout_s=0.2,
        batching=batching.BatchingOptions(max_batch_size=64, batch_timeout_s=3.0),
    )
    channel = grpc.insecure_channel(caption_server.target)
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    code, details, _ = _call(predictions.Predict, _request([images['red.jpg']]))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server's own answer, after waiting the request's 0.2 s budget: not the
    # batch's 3 s timeout (the batch would then have run and answered OK) nor
    # the client's 20 s deadline (gRPC's own message).
    waited = re.search(r'deadline passed after ([0-9.]+) s waiting for its batch', details)
    assert waited, details
    assert 0 < float(waited[1]) <= 0.2
    channel.close()


def test_batching_merges_concurrent_requests_and_isolates_a_bad_image(
    fixture_model_base_path, start_caption_server, images, monkeypatch
):
    caption_server = start_caption_server(
        fixture_model_base_path,
        batching=batching.BatchingOptions(max_batch_size=8, batch_timeout_s=1.0),
    )
    served = caption_server.managers[configs.MODEL_NAME].resolve()
    batch_sizes = []
    original_run = served.run

    def recording_run(signature_name, arrays, output_keys):
        batch_sizes.append(len(next(iter(arrays.values()))))
        return original_run(signature_name, arrays, output_keys)

    channel = grpc.insecure_channel(caption_server.target)
    predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    # Connect first, so the concurrent requests below all land in one batch window.
    assert _call(predictions.Predict, _request([images['red.jpg']]))[0] == grpc.StatusCode.OK
    monkeypatch.setattr(served, 'run', recording_run)
    photo = images['photo.jpg']
    # Passes the header check, fails in the graph's decoder: only a batch rerun can isolate it.
    requests = [_request([images['red.jpg']]), _request([photo[: len(photo) // 3]])]
    requests += [_request([images['blue.png']]), _request([images['green.gif']])]
    results = [None] * len(requests)

    def send(index):
        results[index] = _call(predictions.Predict, requests[index])

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    codes = [result[0] for result in results]
    assert codes == [
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OK,
        grpc.StatusCode.OK,
    ]
    captions = [
        result[2].outputs[features.CAPTION_OUTPUT].string_val[0] for result in results if result[2]
    ]
    assert captions == [b'a red picture', b'a blue picture', b'a green picture']
    assert max(batch_sizes) > 1  # Requests really were merged.
    channel.close()


def test_batching_options_from_the_deploy_file():
    from tfx_captioning.serving import tf_serving_config

    options = batching.BatchingOptions.from_batching_parameters(
        tf_serving_config.parse_batching_parameters(
            'max_batch_size { value: 16 } batch_timeout_micros { value: 1500 }'
        )
    )
    assert options.max_batch_size == 16
    assert options.batch_timeout_s == pytest.approx(0.0015)
    assert options.num_batch_threads == batching.BatchingOptions().num_batch_threads
    with pytest.raises(ValueError):
        batching.BatchingOptions.from_batching_parameters(
            tf_serving_config.parse_batching_parameters('max_batch_size { value: 0 }')
        )


def test_server_binds_loopback_by_default_and_refuses_a_taken_port(
    fixture_model_base_path, start_caption_server
):
    from tfx_captioning.serving import server

    first = start_caption_server(fixture_model_base_path)
    assert first.target.startswith(options.LOOPBACK_HOST + ':')
    assert server.ServerOptions().host == options.LOOPBACK_HOST
    with pytest.raises(RuntimeError, match='cannot bind'):
        start_caption_server(fixture_model_base_path, port=first.port)
