#!/usr/bin/env python3
"""Checks that live odds arrive on an odds-service WebSocket (`/ws/odds`).

Standard library only, so `make e2e-kind` needs nothing but python3. Subscribes to every
event ("*"), then reads until `--min-updates` live `odds` messages arrived (snapshots do not
count) or `--timeout` seconds passed. Also checks the service's promise that versions only
rise per event and market. Exit 0 on success, 1 with the reason otherwise.

    python3 charts/kind/ws_check.py --url ws://127.0.0.1:8080/ws/odds --min-updates 5
"""

import argparse
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time
import urllib.parse

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WsError(Exception):
    pass


class Client:
    """A minimal RFC 6455 client: text frames, ping/pong, close; no extensions."""

    def __init__(self, url, timeout):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws":
            raise WsError(f"only ws:// URLs are supported, not {url}")
        host, port = parts.hostname, parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise WsError("connection closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise WsError(f"handshake refused: {lines[0]}")
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise WsError("bad Sec-WebSocket-Accept in the handshake")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WsError("connection closed by the server")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, opcode, payload):
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_text(self, text):
        self.send(0x1, text.encode())

    def recv_text(self):
        """The next text message; answers pings; raises on close."""
        message, opcode = b"", None
        while True:
            b0, b1 = self._read(2)
            fin, op = b0 & 0x80, b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if op == 0x9:
                self.send(0xA, payload)
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise WsError(f"server closed the connection: {code} {payload[2:].decode(errors='replace')}")
            if op in (0x1, 0x2):
                opcode, message = op, payload
            elif op == 0x0:
                message += payload
            if fin:
                if opcode != 0x1:
                    raise WsError("unexpected binary message")
                return message.decode()

    def close(self):
        try:
            self.send(0x8, struct.pack("!H", 1000))
        finally:
            self.sock.close()


def check(url, min_updates, timeout, out=print):
    deadline = time.monotonic() + timeout
    client = Client(url, timeout=min(timeout, 10))
    counts = {"subscribed": 0, "snapshot": 0, "odds": 0}
    newest = {}
    try:
        client.send_text(json.dumps({"type": "subscribe", "eventId": "*"}))
        while counts["odds"] < min_updates:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WsError(f"only {counts['odds']} live odds updates within {timeout}s (wanted {min_updates}); got {counts}")
            client.sock.settimeout(left)
            try:
                msg = json.loads(client.recv_text())
            except socket.timeout:
                continue
            kind = msg.get("type")
            if kind == "error":
                raise WsError(f"server error: {msg}")
            counts[kind] = counts.get(kind, 0) + 1
            if kind in ("snapshot", "odds"):
                data = msg["data"]
                key = (data["event_id"], data["market"])
                version = data["version"]
                if kind == "odds" and key in newest and version <= newest[key]:
                    raise WsError(f"{key}: version {version} after {newest[key]}: versions must rise")
                newest[key] = max(version, newest.get(key, 0))
    finally:
        client.close()
    out(f"ws_check: {counts['odds']} live odds updates and {counts['snapshot']} snapshots for "
        f"{len({k[0] for k in newest})} events from {url}; versions rose per event and market")
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws/odds")
    parser.add_argument("--min-updates", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    try:
        check(args.url, args.min_updates, args.timeout)
    except (WsError, OSError, ValueError, KeyError) as error:
        print(f"ws_check: FAIL: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
