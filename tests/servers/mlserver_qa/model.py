"""Toy extractive-QA runtime for MLServer (Open Inference Protocol / KServe V2).

Inputs : `question`, `context` -- BYTES, one UTF-8 string each, shape [1] or [1,1].
Outputs: `answer` (BYTES) -- the first sentence of the context, without its period;
         `start`, `end` (INT64) -- code-point offsets of `answer` in the context,
         half-open [start, end). Every output gets the shape of the `context` input.

The question text can trigger test behaviours:
  "sleep:<seconds>..." -> asyncio.sleep(<seconds>) first, then answer normally
  "fail:<message>"     -> raise RuntimeError("injected failure: <message>")
  "empty:..."          -> answer "" with start = end = 0

Run (settings.json pins host 127.0.0.1, no worker processes, no metrics server;
ports come from the environment because settings.json leaves them unset):
  MLSERVER_GRPC_PORT=<free> MLSERVER_HTTP_PORT=<free> PYTHONDONTWRITEBYTECODE=1 \
    mlserver start tests/servers/mlserver_qa
Ready when gRPC ModelReady(name="qa") returns ready=true (model version "1").
"""

import asyncio
import re

from mlserver import MLModel
from mlserver.codecs.string import decode_str
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

# Leading blanks, then the shortest text up to the first "." (or the end of the
# context); blanks before that period are left out of the answer.
FIRST_SENTENCE = re.compile(r"\s*(.*?)\s*(?:\.|$)", re.S)
SLEEP = re.compile(r"sleep:\s*([0-9]*\.?[0-9]+)")


def _flatten(data):
    """Nested lists of tensor data -> flat list."""
    if isinstance(data, list):
        return [x for item in data for x in _flatten(item)]
    return [data]


class QAModel(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {inp.name: inp for inp in payload.inputs}
        for name in ("question", "context"):
            if name not in inputs:
                raise ValueError(f"missing input tensor '{name}'")

        # One string per input: the first element, whatever the shape.
        question = decode_str(_flatten(inputs["question"].data.root)[0])
        context = decode_str(_flatten(inputs["context"].data.root)[0])

        sleep = SLEEP.match(question)
        if sleep:
            await asyncio.sleep(float(sleep.group(1)))

        if question.startswith("fail:"):
            raise RuntimeError("injected failure: " + question[len("fail:"):])

        if question.startswith("empty:"):
            answer, start, end = "", 0, 0
        else:
            m = FIRST_SENTENCE.match(context)
            start, end = m.start(1), m.end(1)
            answer = context[start:end]

        shape = list(inputs["context"].shape)  # [1] or [1, 1], echoed back
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                ResponseOutput(name="answer", datatype="BYTES", shape=shape,
                               data=[answer.encode("utf-8")]),
                ResponseOutput(name="start", datatype="INT64", shape=shape, data=[start]),
                ResponseOutput(name="end", datatype="INT64", shape=shape, data=[end]),
            ],
        )
