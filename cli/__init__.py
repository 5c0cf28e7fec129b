"""The `orchestrator` command: runs the stack and its processes, migrates, imports and exports plans."""
