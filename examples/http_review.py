"""The workflow behind docs/http.md's examples: a review that waits for a verdict sent over HTTP.

Serve it with ``agentfold serve --runtime http_review:runtime`` and run it with ``agentfold worker
http_review:runtime`` (both from this folder, on the same store).
"""

from __future__ import annotations

import agentfold

runtime = agentfold.Runtime()


@runtime.workflow
async def review(ctx: agentfold.WorkflowContext, draft: str) -> dict[str, str]:
    verdict = await ctx.wait_for("verdict")
    return {"draft": draft, "verdict": verdict["says"]}
