"""Store backends. Each module implements `agentfold.store.EventStore` for one kind of storage."""
