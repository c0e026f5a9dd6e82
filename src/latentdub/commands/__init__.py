"""Click commands of the ``latentdub`` CLI, one module per area."""
