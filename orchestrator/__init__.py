"""Domain core of the Agent Execution System: models, state machine, scheduling. Imports no Flask."""
