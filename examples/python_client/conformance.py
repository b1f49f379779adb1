#!/usr/bin/env python3
"""A Python grpcio client checking an l2d scheduler against its documented contract: the
standard gRPC health service, server reflection, and `Router.Ask` with and without a deadline and
with bad input, each expecting the status code `proto/l2d/v1/router.proto` documents.

Usage:
    python conformance.py --router 127.0.0.1:50051 [--slow-router 127.0.0.1:50052]

`--router` must serve the SQuAD v1.1 dev question `--id` (default: the test fixture's `sb-afc`,
answered "Denver Broncos"); `--slow-router`, if given, is a scheduler whose experts take longer
than a second (a short deadline there must end with DEADLINE_EXCEEDED). Prints one line per
check; exits 1 at the first failure. The Python stubs are generated at start-up from
../../proto with grpcio-tools.
"""

import argparse
import importlib
import importlib.resources
import os
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def load_stubs():
    """Compiles the Router contract into a temporary package and imports it."""
    out = tempfile.mkdtemp(prefix="l2d-stubs-")
    include = importlib.resources.files("grpc_tools") / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + ["l2d/v1/common.proto", "l2d/v1/router.proto"]) != 0:
        sys.exit("cannot compile the l2d protos with grpcio-tools")
    sys.path.insert(0, out)
    return importlib.import_module("l2d.v1.router_pb2"), importlib.import_module("l2d.v1.router_pb2_grpc")


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL {name} {detail}")
        sys.exit(1)
    print(f"ok   {name}")


def expect_code(name, call, code):
    try:
        call()
    except grpc.RpcError as e:
        check(name, e.code() == code, f"(got {e.code().name}: {e.details()})")
        return
    check(name, False, f"(the call succeeded; expected {code.name})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--router", required=True)
    parser.add_argument("--slow-router")
    parser.add_argument("--id", default="sb-afc")
    parser.add_argument("--question", default="Which NFL team represented the AFC at Super Bowl 50?")
    parser.add_argument("--context", default="Super Bowl 50 was an American football game.")
    parser.add_argument("--expect", default="Denver Broncos")
    args = parser.parse_args()
    router_pb2, router_pb2_grpc = load_stubs()
    channel = grpc.insecure_channel(args.router)

    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "l2d.v1.Router", "l2d.v1.Pool"]:
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        check(f"health {service or '(server)'} is SERVING", status == health_pb2.HealthCheckResponse.SERVING)
    expect_code("health of an unknown service is NOT_FOUND",
                lambda: health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5),
                grpc.StatusCode.NOT_FOUND)

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                timeout=5)
    services = {s.name for r in responses for s in r.list_services_response.service}
    for service in ["l2d.v1.Router", "l2d.v1.Pool", "grpc.health.v1.Health"]:
        check(f"reflection lists {service}", service in services, f"(listed: {sorted(services)})")

    router = router_pb2_grpc.RouterStub(channel)

    def ask(timeout=None, **fields):
        request = router_pb2.AskRequest(**{"question": args.question, "context": args.context, "id": args.id,
                                           **fields})
        return router.Ask(request, timeout=timeout)

    answer = ask()
    check("Ask without a deadline answers", answer.text == args.expect, f"(got {answer.text!r})")
    check("the answer names its expert and request id", bool(answer.expert_id) and bool(answer.request_id))
    answer, call = router.Ask.with_call(router_pb2.AskRequest(question=args.question, context=args.context,
                                                              id=args.id),
                                        timeout=5, metadata=[("x-request-id", "py-conformance-1")])
    sent_back = dict(call.initial_metadata()).get("x-request-id")
    check("Ask with a deadline answers and returns the request id",
          answer.text == args.expect and sent_back == "py-conformance-1", f"(got {sent_back!r})")
    expect_code("an empty question is INVALID_ARGUMENT", lambda: ask(question="  "), grpc.StatusCode.INVALID_ARGUMENT)
    expect_code("an empty context is INVALID_ARGUMENT", lambda: ask(context=""), grpc.StatusCode.INVALID_ARGUMENT)
    expect_code("a NaN budget is INVALID_ARGUMENT", lambda: ask(budget=float("nan")), grpc.StatusCode.INVALID_ARGUMENT)
    expect_code("a budget below every expert is FAILED_PRECONDITION", lambda: ask(budget=1e-9),
                grpc.StatusCode.FAILED_PRECONDITION)
    expect_code("an id no expert knows is NOT_FOUND", lambda: ask(id="no-such-question"), grpc.StatusCode.NOT_FOUND)
    expect_code("a question over the size limit is INVALID_ARGUMENT", lambda: ask(question="x" * 10_000),
                grpc.StatusCode.INVALID_ARGUMENT)
    # Refused from the length prefix, before the body is read.
    expect_code("a message over the query-sized limit (264 KiB) is RESOURCE_EXHAUSTED",
                lambda: ask(context="x" * (5 << 20)), grpc.StatusCode.RESOURCE_EXHAUSTED)

    if args.slow_router:
        slow = router_pb2_grpc.RouterStub(grpc.insecure_channel(args.slow_router))
        request = router_pb2.AskRequest(question=args.question, context=args.context, id=args.id)
        # The scheduler's own DEADLINE_EXCEEDED, sent before the caller's deadline: it carries the
        # request id and says so. A client whose own timer fired (a scheduler ignoring
        # grpc-timeout) would get "Deadline Exceeded" with neither.
        try:
            slow.Ask(request, timeout=0.3)
            check("a deadline shorter than the expert is DEADLINE_EXCEEDED", False, "(the call succeeded)")
        except grpc.RpcError as e:
            sent = dict(e.trailing_metadata() or ()).get("x-request-id")
            check("a deadline shorter than the expert is the scheduler's DEADLINE_EXCEEDED",
                  e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and bool(sent)
                  and e.details().startswith("deadline passed after"),
                  f"(got {e.code().name}: {e.details()!r}, request id {sent!r})")
    print("conformance: every check passed")


if __name__ == "__main__":
    main()
