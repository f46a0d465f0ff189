"""The outside world on loopback: a real SMTP server (aiosmtpd) and a fake Twilio REST API.

Both record what they receive and can be told to refuse some recipients, so tests see exactly
what a provider would have seen.
"""
from __future__ import annotations

import email
import email.policy
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from aiosmtpd.controller import Controller


class SmtpServer:
    """aiosmtpd on 127.0.0.1. `refuse[address] = (code, text)` answers RCPT TO with that reply.

    It announces PIPELINING (RFC 2920) unless `pipelining=False`: aiosmtpd reads commands in
    order from its stream, so pipelined commands are answered in order, as the RFC requires.
    """

    def __init__(self, pipelining: bool = True):
        self.pipelining = pipelining
        self.messages: list[dict] = []
        self.refuse: dict[str, tuple[int, str]] = {}
        self.connections = 0
        self._lock = threading.Lock()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=port)

    # aiosmtpd handler hooks
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self._lock:
            self.connections += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refusal = self.refuse.get(address.lower())
        if refusal:
            return f"{refusal[0]} {refusal[1]}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        with self._lock:
            self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "raw": raw,
                                  "message": msg})
        return "250 Message accepted"

    def start(self) -> "SmtpServer":
        self.controller.start()
        self.port = self.controller.port
        self.url = f"smtp://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        self.controller.stop()

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
        self.refuse.clear()

    def to(self, address: str) -> list:
        return [m["message"] for m in self.messages if address.lower() in (a.lower() for a in m["to"])]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.messages)


MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC\w+)/Messages\.json$")


class FakeTwilio:
    """Answers POST /2010-04-01/Accounts/<sid>/Messages.json like Twilio does.

    `fail[number] = (http_status, twilio_code)` makes sends to that number fail; `fail_next`
    is a list of (status, code) answered, in order, to the next sends whatever the number.
    Every accepted message is in `.messages` (the form fields Twilio received) and the time it
    arrived (time.time()) at the same index of `.times`.
    """

    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str = "test-auth-token"):
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[dict] = []
        self.times: list[float] = []
        self.requests = 0
        self.fail: dict[str, tuple[int, int]] = {}
        self.fail_next: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per response (headers and body buffered, flushed by handle_one_request) and
            # no Nagle: a response written in two sends waits out the client's delayed ACK (~40 ms).
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                match = MESSAGES_PATH.match(self.path)
                if not match:
                    return self._answer(404, {"code": 20404, "message": "not found", "status": 404})
                if match["sid"] != fake.account_sid:
                    return self._answer(401, {"code": 20003, "message": "Authenticate", "status": 401})
                form = {k: v[0] for k, v in parse_qs(body).items()}
                with fake._lock:
                    fake.requests += 1
                    failure = fake.fail_next.pop(0) if fake.fail_next else fake.fail.get(form.get("To", ""))
                    if failure is None:
                        sid = f"SM{len(fake.messages) + 1:032x}"
                        fake.messages.append({**form, "sid": sid})
                        fake.times.append(time.time())
                if failure is not None:
                    status, code = failure
                    return self._answer(status, {"code": code, "message": f"fake error {code}", "status": status,
                                                 "more_info": f"https://www.twilio.com/docs/errors/{code}"})
                self._answer(201, {"sid": sid, "status": "queued", "to": form.get("To"), "from": form.get("From"),
                                   "body": form.get("Body"), "account_sid": fake.account_sid,
                                   "messaging_service_sid": form.get("MessagingServiceSid"),
                                   "num_segments": "1", "direction": "outbound-api",
                                   "uri": f"/2010-04-01/Accounts/{fake.account_sid}/Messages/{sid}.json"})

            def _answer(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeTwilio":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
            self.times.clear()
            self.fail.clear()
            self.fail_next.clear()
            self.requests = 0

    def config(self, sender: str = "+33700000000") -> dict:
        """App config that sends SMS here."""
        return {"TWILIO_ACCOUNT_SID": self.account_sid, "TWILIO_AUTH_TOKEN": self.auth_token,
                "TWILIO_API_BASE": self.url, "TWILIO_FROM": sender, "TWILIO_MESSAGING_SERVICE_SID": None}
