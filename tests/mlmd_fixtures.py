"""A real SQLite ML Metadata store holding TFX-like executions, for the progress and interrupt tests."""

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

State = metadata_store_pb2.Execution.State


class Store:
    """A SQLite ML Metadata store with TFX-like executions: one per component, in a `node` context."""

    def __init__(self, path):
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = path
        config.sqlite.connection_mode = (
            metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        )
        self.store = metadata_store.MetadataStore(config)
        self.type_id = self.store.put_execution_type(metadata_store_pb2.ExecutionType(name='t'))
        self.node_type = self.store.put_context_type(metadata_store_pb2.ContextType(name='node'))

    def start(self, component):
        (context_id,) = self.store.put_contexts(
            [metadata_store_pb2.Context(type_id=self.node_type, name=f'pipe.{component}')]
        )
        execution = metadata_store_pb2.Execution(
            type_id=self.type_id, last_known_state=State.RUNNING
        )
        (execution_id,) = self.store.put_executions([execution])
        self.store.put_attributions_and_associations(
            [], [metadata_store_pb2.Association(context_id=context_id, execution_id=execution_id)]
        )
        return execution_id

    def end(self, execution_id, state):
        (execution,) = self.store.get_executions_by_id([execution_id])
        execution.last_known_state = state
        self.store.put_executions([execution])
