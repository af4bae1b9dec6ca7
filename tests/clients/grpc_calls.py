"""gRPC for the end-to-end tests, on Python's grpcio without generated code (the messages
are raw bytes).

Server: grpc_calls.py serve PORT
  Serves /demo.Items/Get: answers OK with the request's bytes, or fails with the status the
  call's `x-want-code` metadata names (a number) and the message `wanted CODE`. Prints
  "listening" once it serves.
Client: grpc_calls.py call HOST:PORT CODES_JSON
  Makes one unary call to /demo.Items/Get per code in CODES_JSON (a list of numbers), in
  order, on one channel (one HTTP/2 connection, cleartext); prints one JSON line per call:
  {"code": the status code received, "details": its message}.
"""
import json
import sys
import time
from concurrent import futures

import grpc

METHOD = "/demo.Items/Get"


def get(request, context):
    wanted = dict(context.invocation_metadata()).get("x-want-code", "0")
    code = int(wanted)
    if code != 0:
        status = next(s for s in grpc.StatusCode if s.value[0] == code)
        context.abort(status, f"wanted {code}")
    return request


def serve(port):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "demo.Items", {"Get": grpc.unary_unary_rpc_method_handler(get)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


def call(target, codes):
    with grpc.insecure_channel(target) as channel:
        stub = channel.unary_unary(METHOD)
        for code in codes:
            try:
                stub(b"item-7", metadata=[("x-want-code", str(code))], timeout=10)
                print(json.dumps({"code": 0, "details": None}), flush=True)
            except grpc.RpcError as error:
                print(json.dumps({"code": error.code().value[0], "details": error.details()}),
                      flush=True)
            time.sleep(0.05)


if sys.argv[1] == "serve":
    serve(int(sys.argv[2]))
else:
    call(sys.argv[2], json.loads(sys.argv[3]))
