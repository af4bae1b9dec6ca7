"""An HTTP/2 client for the end-to-end tests: one connection (TLS with ALPN h2, or cleartext
with prior knowledge), every request sent as a stream before any answer is read, so that all
are in flight at once. Prints one JSON line per request, in the order sent:
{"stream": id, "status": code or null, "reset": bool}.

Usage: h2_streams.py HOST PORT tls|clear REQUESTS_JSON [--source IP] [--in-flight N]
REQUESTS_JSON (or "-": read from stdin): a list of
{"path": "/x", "headers": {"name": "value"}, "reset_after_ms": N} (a request with
reset_after_ms is cancelled with RST_STREAM after that long, unanswered).
--source: the local address to connect from. --in-flight: at most N streams open at once
(new ones start as others end, in order); all at once by default. --pause-ms: after the
first request's answer, wait that long (printing "paused") before the others.
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


def connect(host, port, tls, source):
    sock = socket.create_connection(
        (host, port), timeout=10, source_address=(source, 0) if source else None
    )
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
    host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    spec = json.loads(sys.stdin.read() if sys.argv[4] == "-" else sys.argv[4])
    options = dict(zip(sys.argv[5::2], sys.argv[6::2]))
    in_flight = int(options.get("--in-flight", len(spec) or 1))
    pause_ms = int(options.get("--pause-ms", 0))
    sock = connect(host, port, mode == "tls", options.get("--source"))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    streams = []
    status = {}
    ended = set()
    resets = {}
    started = time.monotonic()

    def open_streams():
        nonlocal pause_ms
        if pause_ms and streams:
            if streams[0] not in ended:
                return
            print("paused", flush=True)
            time.sleep(pause_ms / 1000.0)
            pause_ms = 0
        while len(streams) < len(spec) and len(streams) - len(ended) < in_flight:
            if pause_ms and streams:
                return
            request = spec[len(streams)]
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
            if "reset_after_ms" in request:
                resets[stream] = time.monotonic() - started + request["reset_after_ms"] / 1000.0

    open_streams()
    sock.sendall(conn.data_to_send())
    sock.settimeout(0.05)
    deadline = started + 60
    while len(ended) < len(spec) and time.monotonic() < deadline:
        open_streams()
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
