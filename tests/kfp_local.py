"""Runs steps of a compiled KFP v2 pipeline spec on this machine, the way KFP/Vertex would.

For tests: there is no Kubernetes here, so this plays the backend's part for
one task at a time, using only what the compiled spec says:

1. Build the task's `ExecutorInput` (the JSON that replaces `{{$}}`): constant
   input parameters from the task spec, input artifacts from the outputs of
   the producer tasks (typed by this component's input definitions), output
   artifacts with URIs under a local root, and the `outputFile` where the step
   writes its `ExecutorOutput`.
2. Run the container's `lifecycle.preCacheCheck` command first when the spec
   has one (TFX's FileBasedExampleGen driver, which writes span, fingerprint
   and the resolved input config into the output file), then the container's
   command + args, as separate processes with `python` on the PATH, as in the
   image.
3. Read the `ExecutorOutput` back so that downstream tasks get its artifacts.
"""

import json
import os
import subprocess
import sys
from typing import Dict, List, Mapping, Optional

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

EXECUTOR_INPUT_PLACEHOLDER = '{{$}}'


class StepFailedError(RuntimeError):
    """A step's process exited with an error; the message carries its output tail."""


class LocalSpecRunner:
    """Runs tasks of one compiled PipelineSpec under a local pipeline root."""

    def __init__(
        self,
        spec: pipeline_spec_pb2.PipelineSpec,
        root: str,
        env: Optional[Mapping[str, str]] = None,
        timeout_s: float = 600,
    ) -> None:
        """Args:
        spec: the compiled pipeline.
        root: local directory standing in for the run's pipeline root.
        env: extra environment variables of every step (the image's ENV).
        timeout_s: limit per step process.
        """
        self._spec = spec
        self._deployment = json_format.ParseDict(
            json_format.MessageToDict(spec.deployment_spec),
            pipeline_spec_pb2.PipelineDeploymentConfig(),
        )
        self._root = root
        self._env = dict(env or {})
        self._timeout_s = timeout_s
        self.outputs: Dict[str, pipeline_spec_pb2.ExecutorOutput] = {}
        self.driver_outputs: Dict[str, pipeline_spec_pb2.ExecutorOutput] = {}

    def executor_input(self, task_name: str) -> pipeline_spec_pb2.ExecutorInput:
        """The ExecutorInput a backend would hand to `task_name`'s container."""
        task = self._spec.root.dag.tasks[task_name]
        component = self._spec.components[task.component_ref.name]
        result = pipeline_spec_pb2.ExecutorInput()
        for name, parameter in task.inputs.parameters.items():
            value = parameter.runtime_value
            if value.HasField('constant'):  # schema 2.1
                result.inputs.parameter_values[name].CopyFrom(value.constant)
            elif value.HasField('constant_value'):  # schema 2.0
                result.inputs.parameters[name].CopyFrom(value.constant_value)
            else:
                raise NotImplementedError(f'{task_name}.{name}: only constant parameters.')
        for name, spec in task.inputs.artifacts.items():
            source = spec.task_output_artifact
            if source.producer_task not in self.outputs:
                raise ValueError(f'{task_name} needs {source.producer_task}, which has not run.')
            produced = self.outputs[source.producer_task].artifacts[source.output_artifact_key]
            artifacts = result.inputs.artifacts[name].artifacts
            for artifact in produced.artifacts:
                copy = artifacts.add()
                copy.CopyFrom(artifact)
                # The backend knows each artifact's type from ML Metadata;
                # the step's own ExecutorOutput does not repeat it.
                copy.type.CopyFrom(component.input_definitions.artifacts[name].artifact_type)
        task_dir = os.path.join(self._root, task_name)
        for key, spec in component.output_definitions.artifacts.items():
            result.outputs.artifacts[key].artifacts.add(
                name=f'{task_name}.{key}',
                type=spec.artifact_type,
                uri=os.path.join(task_dir, key),
            )
        result.outputs.output_file = os.path.join(task_dir, 'executor_output.json')
        return result

    def command_lines(self, task_name: str) -> List[List[str]]:
        """The processes the task runs, in order, with `{{$}}` filled in."""
        component = self._spec.components[self._spec.root.dag.tasks[task_name].component_ref.name]
        container = self._deployment.executors[component.executor_label].container
        executor_input = json_format.MessageToJson(self.executor_input(task_name))
        lines = []
        hook = container.lifecycle.pre_cache_check
        if hook.command:
            lines.append(list(hook.command) + list(hook.args))
        lines.append(list(container.command) + list(container.args))
        filled = []
        for line in lines:
            line = [executor_input if arg == EXECUTOR_INPUT_PLACEHOLDER else arg for arg in line]
            leftover = [arg for arg in line if '{{$' in arg]
            if leftover:
                raise NotImplementedError(f'{task_name}: unsupported placeholders {leftover}.')
            filled.append(line)
        return filled

    def run_task(self, task_name: str) -> pipeline_spec_pb2.ExecutorOutput:
        """Runs every process of `task_name`; returns (and keeps) its ExecutorOutput."""
        output_file = self.executor_input(task_name).outputs.output_file
        lines = self.command_lines(task_name)
        for index, line in enumerate(lines):
            self._run(task_name, line)
            if index < len(lines) - 1:
                # The driver's output; the executor reads then overwrites it.
                self.driver_outputs[task_name] = _read_output(output_file)
        self.outputs[task_name] = _read_output(output_file)
        return self.outputs[task_name]

    def _run(self, task_name: str, command: List[str]) -> None:
        env = dict(os.environ, **self._env)
        # `python` in the spec must be this interpreter, as it is the image's.
        env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
        workdir = os.path.join(self._root, '.workdir')
        os.makedirs(workdir, exist_ok=True)
        done = subprocess.run(
            command,
            env=env,
            cwd=workdir,  # Not the repository: the code must be importable as installed.
            capture_output=True,
            text=True,
            timeout=self._timeout_s,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-6000:]
            raise StepFailedError(f'{task_name}: {command[:3]} exited {done.returncode}:\n{tail}')


def _read_output(path: str) -> pipeline_spec_pb2.ExecutorOutput:
    with open(path, encoding='utf-8') as f:
        return json_format.Parse(f.read(), pipeline_spec_pb2.ExecutorOutput())


def artifact_metadata(output: pipeline_spec_pb2.ExecutorOutput, key: str) -> Dict:
    """The metadata (properties and custom properties) of the single artifact under `key`."""
    (artifact,) = output.artifacts[key].artifacts
    return json.loads(json_format.MessageToJson(artifact.metadata))
