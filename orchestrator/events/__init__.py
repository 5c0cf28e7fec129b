"""The event path, in data-flow order: agent → accept → Redis shard stream → drain → apply → database.

- `protocol`: the Redis keys, the shard of an execution and the one message format (`Envelope`) that
  both halves read and write;
- `accept`: the front end's half: tenancy, dedup and hold checks, then one atomic Lua call that
  queues the events; waiting for their outcomes;
- `drain`: the worker's loop over one shard: lease, read, apply, commit, acknowledge, and isolate
  an entry that cannot be applied so that it never holds the shard;
- `apply`: applying a batch of events to executions inside one transaction;
- `dead_letters`: what could not be applied, set aside for operators to list, requeue or drop.
"""
