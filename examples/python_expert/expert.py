#!/usr/bin/env python3
"""An l2d expert written in Python: serves the `l2d.v1.Expert` contract with grpcio and joins a
scheduler's pool by registration (lease + heartbeats), like `l2d expert --register`.

This is the way to put an existing Python model into an l2d pool. Replace `answer()` with your
model; for a Hugging Face extractive QA pipeline, for instance:

    from transformers import pipeline
    qa = pipeline("question-answering", model="distilbert-base-cased-distilled-squad")

    def answer(question, context):
        r = qa(question=question, context=context)
        return r["answer"], r["start"], r["end"], r["score"]

(Python string offsets count code points, as the contract's `Span` does.) The rule shipped here
needs no model: it picks the context sentence sharing most words with the question and answers
with its first capitalised phrase that the question does not already contain.

Usage:
    python expert.py --listen 127.0.0.1:50071 --id py-rule --cost 0.5 --register 127.0.0.1:50051

With --otlp-endpoint http://collector:4317 (pip install -r requirements-tracing.txt), each
answer is a span continuing the trace the scheduler sent (W3C `traceparent` metadata: the
scheduler's span of this call is its parent), exported over OTLP/gRPC.

The Python stubs are generated at start-up from ../../proto with grpcio-tools (pip install -r
requirements.txt), so the contract has one source of truth.
"""

import argparse
import importlib
import importlib.resources
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTOS = ["l2d/v1/common.proto", "l2d/v1/expert.proto", "l2d/v1/pool.proto"]

log = logging.getLogger("python-expert")


def load_stubs():
    """Compiles the l2d protos into a temporary package and imports the generated modules."""
    out = tempfile.mkdtemp(prefix="l2d-stubs-")
    include = importlib.resources.files("grpc_tools") / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + PROTOS) != 0:
        sys.exit("cannot compile the l2d protos with grpcio-tools")
    sys.path.insert(0, out)
    names = ["l2d.v1.expert_pb2", "l2d.v1.expert_pb2_grpc", "l2d.v1.pool_pb2", "l2d.v1.pool_pb2_grpc",
             "l2d.v1.common_pb2"]
    return {name.rsplit(".", 1)[1]: importlib.import_module(name) for name in names}


WORD = re.compile(r"\w+", re.UNICODE)
STOP = {"the", "a", "an", "of", "in", "on", "at", "to", "is", "was", "what", "which", "who", "when",
        "where", "how", "did", "does", "do", "and", "for", "by", "with"}


def answer(question, context):
    """Returns (text, start, end, score) for the question; text "" means no answer."""
    q_words = {w.lower() for w in WORD.findall(question)} - STOP
    best, best_overlap = None, -1
    for m in re.finditer(r"[^.!?]+[.!?]?", context):
        overlap = len(q_words & {w.lower() for w in WORD.findall(m.group())})
        if overlap > best_overlap:
            best, best_overlap = m, overlap
    if best is None:
        return "", 0, 0, 0.0
    for phrase in re.finditer(r"[A-Z][\w'’-]*(?:\s+[A-Z][\w'’-]*)*", best.group()):
        text, start = phrase.group(), best.start() + phrase.start()
        first = text.split()[0]
        if first.lower() in STOP and " " in text:  # "The Denver Broncos" -> "Denver Broncos"
            cut = len(first) + (len(text[len(first):]) - len(text[len(first):].lstrip()))
            text, start = text[cut:], start + cut
        words = {w.lower() for w in WORD.findall(text)}
        if words - q_words - STOP:
            return text, start, start + len(text), float(best_overlap)
    return "", 0, 0, 0.0


def start_tracing(endpoint, expert_id):
    """An OpenTelemetry tracer exporting to `endpoint`, and a function that opens the span of one
    call under the trace context in its gRPC metadata."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = TracerProvider(resource=Resource.create({"service.name": expert_id}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    tracer = provider.get_tracer("l2d-python-expert")
    propagator = TraceContextTextMapPropagator()

    def span(context):
        parent = propagator.extract(dict(context.invocation_metadata()))
        return tracer.start_as_current_span(
            "l2d.v1.Expert/Answer", context=parent, kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "l2d.expert": expert_id})

    return provider, span


def make_servicer(stubs, expert_id, cost, load, traced=None):
    expert_pb2, expert_pb2_grpc, common_pb2 = stubs["expert_pb2"], stubs["expert_pb2_grpc"], stubs["common_pb2"]

    class Expert(expert_pb2_grpc.ExpertServicer):
        def Answer(self, request, context):
            if traced is None:
                return self.answer(request, context)
            with traced(context):
                return self.answer(request, context)

        def answer(self, request, context):
            if not request.question.strip():
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "question is empty")
            if not request.context.strip():
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "context is empty")
            with load["lock"]:
                load["in_flight"] += 1
            started = time.perf_counter()
            try:
                text, start, end, score = answer(request.question, request.context)
            finally:
                with load["lock"]:
                    load["in_flight"] -= 1
                    load["answered"] += 1
            micros = int((time.perf_counter() - started) * 1e6)
            reply = expert_pb2.AnswerResponse(
                text=text, expert_id=expert_id,
                compute=common_pb2.Compute(units=cost, micros=micros))
            if text:
                reply.span.CopyFrom(common_pb2.Span(start=start, end=end))
                reply.score = score
            return reply

        def Describe(self, request, context):
            return expert_pb2.DescribeResponse(
                expert_id=expert_id, backend="python-rule", cost=cost, version="example",
                detail="examples/python_expert: best-overlap sentence, first new capitalised phrase")

    return Expert()


def keep_lease(stubs, scheduler, expert_id, address, cost, load, stop):
    """Registers, heartbeats with the load, registers again when the lease is unknown."""
    pool_pb2, pool_pb2_grpc = stubs["pool_pb2"], stubs["pool_pb2_grpc"]
    pool = pool_pb2_grpc.PoolStub(grpc.insecure_channel(scheduler))
    lease = None
    while not stop.is_set():
        if lease is None:
            try:
                lease = pool.Register(pool_pb2.RegisterRequest(
                    expert_id=expert_id, address=address, cost=cost, backend="python-rule",
                    version="example"), timeout=5)
                log.info("registered with scheduler %s lease=%s", scheduler, lease.lease_id)
            except grpc.RpcError as e:
                log.warning("registration failed: %s; retrying", e.code())
                stop.wait(1.0)
                continue
        stop.wait(lease.heartbeat_interval_ms / 1000.0)
        if stop.is_set():
            break
        with load["lock"]:
            report = pool_pb2.LoadReport(in_flight=load["in_flight"], answered_total=load["answered"])
        try:
            pool.Heartbeat(pool_pb2.HeartbeatRequest(lease_id=lease.lease_id, load=report), timeout=5)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                log.info("scheduler forgot the lease; registering again")
                lease = None
            else:
                log.warning("heartbeat failed: %s", e.code())
    if lease is not None:
        try:
            pool.Deregister(pool_pb2.DeregisterRequest(lease_id=lease.lease_id), timeout=2)
            log.info("left the pool")
        except grpc.RpcError as e:
            log.warning("deregistration failed: %s", e.code())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port to serve on (port 0: any)")
    parser.add_argument("--id", default="py-rule", help="expert id")
    parser.add_argument("--cost", type=float, default=0.5, help="declared cost of one call")
    parser.add_argument("--register", help="scheduler host:port to join")
    parser.add_argument("--advertise", help="host:port the scheduler dials (default: the bound one)")
    parser.add_argument("--otlp-endpoint", help="export a span per answer to this OTLP/gRPC receiver")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    stubs = load_stubs()
    load = {"lock": threading.Lock(), "in_flight": 0, "answered": 0}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    provider, traced = start_tracing(args.otlp_endpoint, args.id) if args.otlp_endpoint else (None, None)
    stubs["expert_pb2_grpc"].add_ExpertServicer_to_server(
        make_servicer(stubs, args.id, args.cost, load, traced), server)
    port = server.add_insecure_port(args.listen)
    host = args.listen.rsplit(":", 1)[0]
    address = args.advertise or f"{host}:{port}"
    server.start()
    log.info("expert serving expert=%s address=%s", args.id, address)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    lease_thread = None
    if args.register:
        lease_thread = threading.Thread(
            target=keep_lease, args=(stubs, args.register, args.id, address, args.cost, load, stop))
        lease_thread.start()
    stop.wait()
    if lease_thread:
        lease_thread.join()
    server.stop(grace=2).wait()
    if provider is not None:
        provider.shutdown()  # exports the spans still buffered


if __name__ == "__main__":
    main()
