// An agent in another language: plain fetch (Node >= 18), no packages.
// Usage: node agent.mjs BASE_URL TOKEN STREAM
// Appends with an expected version, retries with the same ids, reads back, subscribes; prints a JSON summary.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";

const [base, token, stream] = process.argv.slice(2);
const auth = { Authorization: `Bearer ${token}` };

async function call(method, path, body) {
  const response = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: { ...auth, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, type: response.headers.get("content-type"), body: await response.json() };
}

const path = `/streams/${encodeURIComponent(stream)}`;
const first = {
  expected_version: "no_stream",
  events: [
    { id: randomUUID(), type: "TaskClaimed", data: { task: 1 }, metadata: { agent_id: "somebody-else" } },
    { id: randomUUID(), type: "NoteTaken", data: { text: "héllo" } },
  ],
};
const appended = await call("POST", path, first);
assert.equal(appended.status, 200, JSON.stringify(appended.body));
assert.equal(appended.body.version, 2);

const retried = await call("POST", path, first); // the response was lost, say: send the same request again
assert.equal(retried.status, 200);
assert.deepEqual(retried.body, appended.body);

const stale = await call("POST", path, { expected_version: 0, events: [{ id: randomUUID(), type: "NoteTaken" }] });
assert.equal(stale.status, 409);
assert.equal(stale.type, "application/problem+json");
assert.equal(stale.body.type, "urn:agentfold:error:WrongExpectedVersion");
assert.equal(stale.body.actual_version, 2);

const next = { expected_version: stale.body.actual_version, events: [{ id: randomUUID(), type: "TaskDone", data: { task: 1 } }] };
const third = await call("POST", path, next);
assert.equal(third.status, 200);
assert.equal(third.body.version, 3);

const read = await call("GET", path);
assert.equal(read.status, 200);
assert.deepEqual(read.body.events.map((e) => e.type), ["TaskClaimed", "NoteTaken", "TaskDone"]);
assert.deepEqual(read.body.events.map((e) => e.id), [...first.events.map((e) => e.id), next.events[0].id]);
assert.ok(read.body.events.every((e) => e.metadata.agent_id === read.body.events[0].metadata.agent_id));
assert.notEqual(read.body.events[0].metadata.agent_id, "somebody-else");
assert.equal(read.body.events[1].data.text, "héllo");

// Subscribe from the first event's position (as a reconnecting client would, with Last-Event-ID).
const controller = new AbortController();
const subscription = await fetch(`${base}/api/v1/subscribe?prefix=${encodeURIComponent(stream)}`, {
  headers: { ...auth, "Last-Event-ID": String(read.body.events[0].position) },
  signal: controller.signal,
});
assert.equal(subscription.status, 200);
const decoder = new TextDecoder();
const received = [];
let buffer = "";
const reader = subscription.body.getReader();
while (received.length < 2) {
  const { value, done } = await reader.read();
  assert.ok(!done, "the subscription ended early");
  buffer += decoder.decode(value, { stream: true }).replaceAll("\r\n", "\n");
  let end;
  while ((end = buffer.indexOf("\n\n")) >= 0) {
    const block = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    const lines = block.split("\n");
    const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
    const id = lines.find((l) => l.startsWith("id:"));
    if (data) received.push({ id: id && id.slice(3).trim(), event: JSON.parse(data) });
  }
}
controller.abort();
assert.deepEqual(received.map((r) => r.event.type), ["NoteTaken", "TaskDone"]);
assert.ok(received.every((r) => r.id === String(r.event.position)));

console.log(JSON.stringify({ ok: true, agent_id: read.body.events[0].metadata.agent_id, positions: received.map((r) => r.event.position) }));
