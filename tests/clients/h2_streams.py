"""An HTTP/2 client for the end-to-end tests: one connection (TLS with ALPN h2, or cleartext
with prior knowledge), every request sent as a stream before any answer is read, so that all
are in flight at once. Prints one JSON line per request, in the order sent:
{"stream": id, "status": code or null, "reset": bool}.

Usage: h2_streams.py HOST PORT tls|clear REQUESTS_JSON [--keep-open-ms N]
REQUESTS_JSON: a list of {"path": "/x", "headers": {"name": "value"}, "reset_after_ms": N}
(a request with reset_after_ms is cancelled with RST_STREAM after that long, unanswered).
"""
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events


def connect(host, port, tls):
    sock = socket.create_connection((host, port), timeout=10)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        sock = context.wrap_socket(sock, server_hostname=host)
        if sock.selected_alpn_protocol() != "h2":
            sys.exit("the server did not choose h2")
    return sock


def main():
    host, port, mode, spec = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    keep_open_ms = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[5] == "--keep-open-ms" else 0
    sock = connect(host, port, mode == "tls")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    streams = []
    for request in spec:
        stream = conn.get_next_available_stream_id()
        headers = [
            (":method", request.get("method", "GET")),
            (":scheme", "https" if mode == "tls" else "http"),
            (":authority", f"{host}:{port}"),
            (":path", request["path"]),
            ("user-agent", "h2-streams/1.0"),
        ] + list(request.get("headers", {}).items())
        conn.send_headers(stream, headers, end_stream=True)
        streams.append(stream)
    sock.sendall(conn.data_to_send())
    status = {}
    ended = set()
    started = time.monotonic()
    resets = {
        stream: request["reset_after_ms"] / 1000.0
        for stream, request in zip(streams, spec)
        if "reset_after_ms" in request
    }
    sock.settimeout(0.05)
    deadline = started + 30
    while len(ended) < len(streams) and time.monotonic() < deadline:
        now = time.monotonic()
        for stream, after in list(resets.items()):
            if now - started >= after and stream not in ended:
                conn.reset_stream(stream, error_code=h2.errors.ErrorCodes.CANCEL)
                ended.add(stream)
                del resets[stream]
        pending = conn.data_to_send()
        if pending:
            sock.sendall(pending)
        try:
            data = sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            continue
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                for name, value in event.headers:
                    if name in (b":status", ":status"):
                        status[event.stream_id] = int(value)
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                ended.add(event.stream_id)
        pending = conn.data_to_send()
        if pending:
            sock.sendall(pending)
    if keep_open_ms:
        time.sleep(keep_open_ms / 1000.0)
    conn.close_connection()
    try:
        sock.sendall(conn.data_to_send())
    except OSError:
        pass
    sock.close()
    for stream, request in zip(streams, spec):
        print(json.dumps({
            "stream": stream,
            "status": status.get(stream),
            "reset": "reset_after_ms" in request,
        }))


main()
