"""Runs a compiled KFP v2 pipeline spec on this machine, step by step, the way KFP/Vertex would.

For tests: there is no Kubernetes here, so this plays the backend's part,
using only what the compiled spec says:

1. Order the DAG's tasks by their dependencies (`dependent_tasks` and the
   producers of their input artifacts).
2. For each container task, build its `ExecutorInput` (the JSON that replaces
   `{{$}}`): constant input parameters from the task spec; input artifacts
   from the outputs of the producer tasks, as the launcher hands them on
   (name, URI and metadata from the producer's `ExecutorOutput`, typed by this
   component's input definitions); output artifacts with fresh URIs under the
   local root (`<root>/<task>/<output key>`, created empty as an object
   store's prefix would be writable); and the `outputFile` where the step
   writes its `ExecutorOutput`.
3. Run the container's `lifecycle.preCacheCheck` command first when the spec
   has one (TFX's FileBasedExampleGen driver, which writes span, fingerprint
   and the resolved input config into the output file), then the container's
   command + args, each as a separate process, with `python` on the PATH and
   only the image's environment (`image_environment`), as in the pod.
4. Read the `ExecutorOutput` back so that downstream tasks get its artifacts.

Resolver tasks (TFX's latest-blessed-model Resolver compiles to two: a
`resolver` executor whose ML Metadata query finds the latest ModelBlessing
with `blessed=1`, and one that finds the Model it names) run no container: the
backend evaluates the query against its ML Metadata store. There is none
here, so they resolve as on a pipeline's first run, before any model was
blessed: each output key yields an empty artifact list, and the consumer
(CaptionEvaluator's `baseline_model`) receives an empty list.
"""

import collections
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Mapping, Optional

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

EXECUTOR_INPUT_PLACEHOLDER = '{{$}}'
LOG_FILE = 'logs.txt'
"""Each step's stdout and stderr, in `<root>/<task>/`."""


class StepFailedError(RuntimeError):
    """A step's process exited with an error; the message carries its output tail."""


def image_environment(
    image_env: Mapping[str, str], home: str, python_bin: Optional[str] = None
) -> Dict[str, str]:
    """The whole environment of a step process: a bare pod's plus the image's ENV.

    Nothing of the caller's environment leaks in (no PYTHONHASHSEED, no
    PYTHONPATH, no Keras cache in the caller's home), so a step that works here
    does not depend on how the tests were started.

    Args:
      image_env: the image's ENV (see `dockerfile_env`).
      home: the step's HOME, standing in for the pod's empty one.
      python_bin: the directory of the image's `python`; by default this
        interpreter's, which has what the image installs.
    """
    python_bin = python_bin or os.path.dirname(sys.executable)
    return {
        'PATH': os.pathsep.join([python_bin, '/usr/local/bin', '/usr/bin', '/bin']),
        'HOME': home,
        'LANG': 'C.UTF-8',
        **image_env,
    }


def dockerfile_env(path: str) -> Dict[str, str]:
    """The `ENV KEY=VALUE ...` settings of a Dockerfile (the form ours uses)."""
    with open(path, encoding='utf-8') as f:
        text = f.read().replace('\\\n', ' ')
    env = {}
    for line in text.splitlines():
        keyword, _, rest = line.strip().partition(' ')
        if keyword.upper() == 'ENV':
            for item in rest.split():
                key, sep, value = item.partition('=')
                if not sep:
                    raise NotImplementedError(f'{path}: only ENV KEY=VALUE is read, got {line!r}.')
                env[key] = value.strip('"')
    return env


class LocalSpecRunner:
    """Runs the tasks of one compiled PipelineSpec under a local pipeline root."""

    def __init__(
        self,
        spec: pipeline_spec_pb2.PipelineSpec,
        root: str,
        env: Optional[Mapping[str, str]] = None,
        timeout_s: float = 600,
        inherit_env: bool = True,
    ) -> None:
        """Args:
        spec: the compiled pipeline.
        root: local directory standing in for the run's pipeline root.
        env: environment variables of every step (the image's ENV).
        timeout_s: limit per step process.
        inherit_env: start from this process's environment (with this
          interpreter's directory first on PATH); False gives the steps
          exactly `env` (see `image_environment`).
        """
        self._spec = spec
        self._deployment = json_format.ParseDict(
            json_format.MessageToDict(spec.deployment_spec),
            pipeline_spec_pb2.PipelineDeploymentConfig(),
        )
        self._root = root
        self._env = dict(env or {})
        self._inherit_env = inherit_env
        self._timeout_s = timeout_s
        self.outputs: Dict[str, pipeline_spec_pb2.ExecutorOutput] = {}
        self.driver_outputs: Dict[str, pipeline_spec_pb2.ExecutorOutput] = {}
        self.commands: Dict[str, List[List[str]]] = {}
        self.wall_s: Dict[str, float] = {}

    def _executor(self, task_name: str) -> pipeline_spec_pb2.PipelineDeploymentConfig.ExecutorSpec:
        component = self._spec.components[self._spec.root.dag.tasks[task_name].component_ref.name]
        return self._deployment.executors[component.executor_label]

    def executor_kind(self, task_name: str) -> str:
        """'container', 'resolver', 'importer' or 'custom_job'."""
        return self._executor(task_name).WhichOneof('spec')

    def task_order(self) -> List[str]:
        """Every task of the DAG, each after all it depends on (ties by name, so stable)."""
        tasks = self._spec.root.dag.tasks
        upstream = {
            name: set(task.dependent_tasks)
            | {a.task_output_artifact.producer_task for a in task.inputs.artifacts.values()}
            for name, task in tasks.items()
        }
        downstream = collections.defaultdict(set)
        for name, producers in upstream.items():
            for producer in producers:
                downstream[producer].add(name)
        waiting = {name: len(producers) for name, producers in upstream.items()}
        ready = sorted(name for name, count in waiting.items() if count == 0)
        order = []
        while ready:
            name = ready.pop(0)
            order.append(name)
            for consumer in downstream[name]:
                waiting[consumer] -= 1
                if waiting[consumer] == 0:
                    ready.append(consumer)
            ready.sort()
        if len(order) != len(tasks):
            raise ValueError(f'The DAG has a cycle among {sorted(set(tasks) - set(order))}.')
        return order

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
            # An empty list stays an (empty) entry: the executor sees the key.
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
        container = self._executor(task_name).container
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
        """Runs `task_name` as the backend would; returns (and keeps) its ExecutorOutput."""
        start = time.monotonic()
        kind = self.executor_kind(task_name)
        if kind == 'resolver':
            self.outputs[task_name] = self._resolve_first_run(task_name)
        elif kind == 'container':
            self.outputs[task_name] = self._run_container(task_name)
        else:
            raise NotImplementedError(f'{task_name}: {kind} executors are not emulated.')
        self.wall_s[task_name] = time.monotonic() - start
        return self.outputs[task_name]

    def run_all(self) -> Dict[str, pipeline_spec_pb2.ExecutorOutput]:
        """Runs every task in dependency order; returns the outputs by task."""
        for task_name in self.task_order():
            self.run_task(task_name)
        return self.outputs

    def _resolve_first_run(self, task_name: str) -> pipeline_spec_pb2.ExecutorOutput:
        """A resolver's result before anything matches its query: empty lists."""
        component = self._spec.components[self._spec.root.dag.tasks[task_name].component_ref.name]
        output = pipeline_spec_pb2.ExecutorOutput()
        for key in component.output_definitions.artifacts:
            output.artifacts[key].SetInParent()
        return output

    def _run_container(self, task_name: str) -> pipeline_spec_pb2.ExecutorOutput:
        executor_input = self.executor_input(task_name)
        for artifacts in executor_input.outputs.artifacts.values():
            for artifact in artifacts.artifacts:
                os.makedirs(artifact.uri, exist_ok=True)
        output_file = executor_input.outputs.output_file
        lines = self.command_lines(task_name)
        self.commands[task_name] = lines
        log_path = os.path.join(os.path.dirname(output_file), LOG_FILE)
        for index, line in enumerate(lines):
            self._run(task_name, line, log_path)
            if index < len(lines) - 1:
                # The driver's output; the executor reads then overwrites it.
                self.driver_outputs[task_name] = _read_output(output_file)
        return _read_output(output_file)

    def _run(self, task_name: str, command: List[str], log_path: str) -> None:
        if self._inherit_env:
            env = dict(os.environ, **self._env)
            # `python` in the spec must be this interpreter, as it is the image's.
            env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
        else:
            env = dict(self._env)
        workdir = os.path.join(self._root, '.workdir')
        os.makedirs(workdir, exist_ok=True)
        if 'HOME' in env:
            os.makedirs(env['HOME'], exist_ok=True)
        done = subprocess.run(
            command,
            env=env,
            cwd=workdir,  # Not the repository: the code must be importable as installed.
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=self._timeout_s,
        )
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, 'a', encoding='utf-8') as f:
            f.write(f'$ {" ".join(command[:3])} ...\n{done.stdout}\n')
        if done.returncode != 0:
            raise StepFailedError(
                f'{task_name}: {command[:3]} exited {done.returncode} (log: {log_path}):\n'
                f'{done.stdout[-6000:]}'
            )


def _read_output(path: str) -> pipeline_spec_pb2.ExecutorOutput:
    with open(path, encoding='utf-8') as f:
        return json_format.Parse(f.read(), pipeline_spec_pb2.ExecutorOutput())


def artifact_metadata(output: pipeline_spec_pb2.ExecutorOutput, key: str) -> Dict:
    """The metadata (properties and custom properties) of the single artifact under `key`."""
    (artifact,) = output.artifacts[key].artifacts
    return json.loads(json_format.MessageToJson(artifact.metadata))
