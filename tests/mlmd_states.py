"""Reading execution states from ML Metadata, for the caching and resume tests."""

from typing import Any, Dict, List

from ml_metadata.proto import metadata_store_pb2


def execution_states(store) -> List[Dict[str, Any]]:
    """Every execution as {'component', 'state'} in creation order (for caching checks).

    The component is the node id of the execution's TFX `node` context.
    """
    node_type = store.get_context_type('node').id
    rows = []
    for execution in sorted(store.get_executions(), key=lambda e: e.id):
        nodes = [c for c in store.get_contexts_by_execution(execution.id) if c.type_id == node_type]
        name = nodes[0].name.rsplit('.', 1)[-1] if nodes else execution.type
        rows.append(
            {
                'component': name,
                'state': metadata_store_pb2.Execution.State.Name(execution.last_known_state),
            }
        )
    return rows
