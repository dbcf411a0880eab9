"""A fake payment provider: a real HTTP server on 127.0.0.1 that honours idempotency keys and counts charges.

It behaves like the payment APIs agents call in production, in the ways that matter for a crash:

- ``POST /charges`` with an ``Idempotency-Key`` header charges once per key. Repeating the request with the same
  key (a retry, a resumed worker) returns the first charge and charges nothing; reusing a key for a different order
  or amount is refused with 422, as real providers do.
- ``GET /charges?idempotency_key=K`` answers what became of a key: the charge, or 404 if it was never charged. This
  is what a resumed workflow's ``reconcile`` asks.
- ``POST /charges/<id>/confirm`` confirms (captures) a charge; confirming twice is harmless.
- ``GET /ledger`` returns every charge and every request counted, so anyone can check the outcome.

Charges are counted per order (how many distinct charges an order got) and requests per key (how often a key was
sent), so a double charge cannot hide behind the idempotency keys.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

LOOPBACK: Final = "127.0.0.1"
REQUEST_TIMEOUT_SECONDS: Final = 10.0


class ProviderError(Exception):
    """The payment provider refused a request or could not be reached (a step retries it per its policy)."""


@dataclass
class Charge:
    """One charge the provider made."""

    charge_id: str
    idempotency_key: str
    order_id: str
    amount_cents: int
    status: str = "charged"
    charged_at: float = field(default_factory=time.time)


@dataclass
class Ledger:
    """Everything the provider did: charges by id, and how often each key was sent and asked about."""

    charges: dict[str, Charge] = field(default_factory=dict)
    charge_requests: dict[str, int] = field(default_factory=dict)
    status_queries: dict[str, int] = field(default_factory=dict)

    def charges_per_order(self) -> dict[str, int]:
        """How many distinct charges each order got (more than one is a double charge)."""
        counts: dict[str, int] = {}
        for charge in self.charges.values():
            counts[charge.order_id] = counts.get(charge.order_id, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "charges": [asdict(charge) for charge in self.charges.values()],
            "charge_requests": dict(self.charge_requests),
            "status_queries": dict(self.status_queries),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        charges = {item["charge_id"]: Charge(**item) for item in data["charges"]}
        return cls(charges, dict(data["charge_requests"]), dict(data["status_queries"]))


class PaymentProvider:
    """The provider's state and its HTTP server, served from a thread of this process.

    Use as ``with PaymentProvider() as provider:``; `url` is where it listens (a free port on 127.0.0.1).
    `latency_seconds` delays every charge, like a real provider's round trip.
    """

    def __init__(self, latency_seconds: float = 0.0) -> None:
        self.latency_seconds = latency_seconds
        self._lock = threading.Lock()
        self._ledger = Ledger()
        self._by_key: dict[str, str] = {}
        self._server = ThreadingHTTPServer((LOOPBACK, 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="payment-provider", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> PaymentProvider:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def ledger(self) -> Ledger:
        """A copy of everything the provider did so far."""
        with self._lock:
            return Ledger.from_json(self._ledger.to_json())

    # -- the API, called from the server's threads ------------------------------------------------------------

    def charge(self, key: str, order_id: str, amount_cents: int) -> tuple[int, dict[str, Any]]:
        if self.latency_seconds:
            time.sleep(self.latency_seconds)
        with self._lock:
            self._ledger.charge_requests[key] = self._ledger.charge_requests.get(key, 0) + 1
            existing_id = self._by_key.get(key)
            if existing_id is not None:
                existing = self._ledger.charges[existing_id]
                if (existing.order_id, existing.amount_cents) != (order_id, amount_cents):
                    return 422, {"error": f"idempotency key {key!r} was used for another charge"}
                return 200, asdict(existing)
            charge = Charge(f"ch_{len(self._ledger.charges) + 1:05d}", key, order_id, amount_cents)
            self._ledger.charges[charge.charge_id] = charge
            self._by_key[key] = charge.charge_id
            return 201, asdict(charge)

    def status(self, key: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self._ledger.status_queries[key] = self._ledger.status_queries.get(key, 0) + 1
            charge_id = self._by_key.get(key)
            if charge_id is None:
                return 404, {"error": f"nothing was charged with idempotency key {key!r}"}
            return 200, asdict(self._ledger.charges[charge_id])

    def confirm(self, charge_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            charge = self._ledger.charges.get(charge_id)
            if charge is None:
                return 404, {"error": f"no charge {charge_id!r}"}
            charge.status = "confirmed"
            return 200, asdict(charge)


def _handler_for(provider: PaymentProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None  # the demo's screen is for the story, not an access log

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            decoded = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(decoded, dict):
                raise ValueError("the body must be a JSON object")
            return decoded

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/ledger":
                self._reply(200, provider.ledger().to_json())
                return
            keys = urllib.parse.parse_qs(url.query).get("idempotency_key")
            if url.path == "/charges" and keys:
                self._reply(*provider.status(keys[0]))
                return
            self._reply(404, {"error": f"no such resource {url.path!r}"})

        def do_POST(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            try:
                body = self._body()
            except ValueError as error:
                self._reply(400, {"error": str(error)})
                return
            if path == "/charges":
                key = self.headers.get("Idempotency-Key")
                order_id, amount = body.get("order_id"), body.get("amount_cents")
                if not key or not isinstance(order_id, str) or not isinstance(amount, int) or amount <= 0:
                    self._reply(400, {"error": "a charge needs Idempotency-Key, order_id and amount_cents > 0"})
                    return
                self._reply(*provider.charge(key, order_id, amount))
                return
            parts = path.strip("/").split("/")
            if len(parts) == 3 and parts[0] == "charges" and parts[2] == "confirm":
                self._reply(*provider.confirm(parts[1]))
                return
            self._reply(404, {"error": f"no such resource {path!r}"})

    return Handler


class ProviderClient:
    """Calls the provider over HTTP (blocking; the runtime runs plain step functions in a thread)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return int(error.code), json.loads(error.read() or b"{}")
        except (urllib.error.URLError, OSError) as error:
            raise ProviderError(f"the payment provider at {self.base_url} cannot be reached: {error}") from error

    def charge(self, idempotency_key: str, order_id: str, amount_cents: int) -> dict[str, Any]:
        """Charge an order once per key; the same key returns the same charge."""
        status, body = self._call(
            "POST",
            "/charges",
            {"order_id": order_id, "amount_cents": amount_cents},
            {"Idempotency-Key": idempotency_key},
        )
        if status not in (200, 201):
            raise ProviderError(f"charge {idempotency_key!r} refused ({status}): {body.get('error')}")
        return body

    def charge_for_key(self, idempotency_key: str) -> dict[str, Any] | None:
        """The charge made with this key, or None if nothing was charged with it."""
        status, body = self._call("GET", "/charges?" + urllib.parse.urlencode({"idempotency_key": idempotency_key}))
        if status == 404:
            return None
        if status != 200:
            raise ProviderError(f"status of {idempotency_key!r} unavailable ({status}): {body.get('error')}")
        return body

    def confirm(self, charge_id: str) -> dict[str, Any]:
        """Confirm (capture) a charge; confirming it again changes nothing."""
        status, body = self._call("POST", f"/charges/{urllib.parse.quote(charge_id)}/confirm", {})
        if status != 200:
            raise ProviderError(f"confirming {charge_id!r} refused ({status}): {body.get('error')}")
        return body

    def ledger(self) -> Ledger:
        """Everything the provider did."""
        status, body = self._call("GET", "/ledger")
        if status != 200:
            raise ProviderError(f"the ledger is unavailable ({status})")
        return Ledger.from_json(body)
