"""A small auth service speaking rabbitmq_auth_backend_http's protocol, for midge's tests.

It answers GET (query string) and POST (form body) on /auth/user, /auth/vhost,
/auth/resource and /auth/topic with `allow`, `allow TAGS` or `deny`, as RabbitMQ expects,
and serves /jwks.json (the file given with --jwks) for the JWT tests. With --cert and
--key it speaks HTTPS; with --client-ca as well it requires a client certificate signed
by that CA. It prints its port on the first line of stdout, then one JSON line per request:
{"method", "path", "params"}. Python's own parsers read the requests, so midge's encoding
is checked by an independent implementation.

The rules (password "secret" for every user):
  user:     alice, bob, carol with the right password; alice gets tags.
  vhost:    everyone on "/" except bob.
  resource: carol may not write (publish); everything else is allowed.
  topic:    routing keys starting with "ok." are allowed, others denied.
"""

import argparse
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

args = argparse.ArgumentParser(description=__doc__)
args.add_argument("--cert")
args.add_argument("--key")
args.add_argument("--client-ca")
args.add_argument("--jwks")
args = args.parse_args()


def decide(path, p):
    user = p.get("username", "")
    if path == "/auth/user":
        if user in ("alice", "bob", "carol") and p.get("password") == "secret":
            return "allow management monitoring" if user == "alice" else "allow"
        return "deny"
    if path == "/auth/vhost":
        return "allow" if p.get("vhost") == "/" and user != "bob" and p.get("ip") else "deny"
    if path == "/auth/resource":
        if p.get("resource") != "exchange":
            return "deny"
        return "deny" if user == "carol" and p.get("permission") == "write" else "allow"
    if path == "/auth/topic":
        key = p.get("routing_key", "")
        return "allow" if key.startswith("ok.") else "deny"
    return "deny"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_request(self, method):
        url = urlsplit(self.path)
        if method == "GET":
            raw = url.query
        else:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length).decode()
            if self.headers.get("Content-Type") != "application/x-www-form-urlencoded":
                raw = ""
        params = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        print(json.dumps({"method": method, "path": url.path, "params": params}), flush=True)
        if url.path == "/jwks.json" and args.jwks:
            with open(args.jwks, "rb") as f:
                body = f.read()
            kind = "application/json"
        else:
            body = decide(url.path, params).encode()
            kind = "text/plain"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.handle_request("GET")

    def do_POST(self):
        self.handle_request("POST")

    def log_message(self, *_):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if args.cert:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    if args.client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(args.client_ca)
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
