"""Fan-out: spreading a store's events to many consumers through Redis Streams.

`agentfold.fanout.redis_relay` copies a store's global log into Redis Streams; `agentfold.fanout.redis_groups` runs
Redis-native consumer groups on the relayed partition streams. Both sit above the store and use only public names of
the store and of the Redis backend (`agentfold.backends.redis`).
"""
