"""The order-pipeline demo: four agents as durable workflows, a fake payment provider, and a worker killed mid-charge.

`agentfold demo` (`make demo`) runs it. `orchestrator.run_demo` tells the story, `pipeline` holds the workflows,
`provider` the HTTP payment provider, `worker` the worker process (``python -m agentfold.demo.worker``), `check`
the verdict. Nothing is imported here, so the worker module runs as ``-m`` without being imported twice.
"""
