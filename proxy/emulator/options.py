"""What a chat or completion request asks for beyond text: n, logprobs, JSON, tool calls.

`chat_plan` turns a validated request into a `Plan` the routes follow, raising the 400s vLLM
0.26.0 answers in its serving layer (after the request model's own validators): `"auto"` tool
choice without `--enable-auto-tool-choice --tool-call-parser`, a named or `"required"` choice
without `--tool-call-parser`, too many logprobs, `n < 1`, an unusable JSON schema.
`Plan.script` gives the fixed output of one choice when a grammar would constrain it (JSON
mode, a tool call): the engine then emits exactly that text, token by token, and ends with
`stop` (or `length`, truncated, if max_tokens runs out first).

A named or required choice is constrained to the tool parser's own format (0.26 on the H200:
the hermes server answered `<tool_call>\n{"name": "get_weather", "arguments": {` and then
JSON whitespace until max_tokens); the script writes that `<tool_call>` text with
`ARGUMENT_PADDING` newlines after the arguments' `{`, the whitespace the random-weight
checkpoint wrote, so a call completes with max_tokens >= ~90 and is cut short at 64 as on the
GPU. The renderer parses it back as the parser does. No state.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from proxy.emulator.logprobs import MAX_LOGPROBS
from proxy.emulator.protocol import ChatCompletionRequest, VllmValidationError
from proxy.emulator.schema_instance import UnsupportedSchemaError, instance_for
from proxy.emulator.tokenizer import FakeTokenizer

AUTO_TOOLS_DISABLED = (
    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
)
TOOL_CALL_OPEN = "<tool_call>\n"
TOOL_CALL_CLOSE = "}\n</tool_call>"
ARGUMENT_PADDING = 48


def tool_call_prefix(name: str) -> str:
    """The hermes text before a call's arguments (what the recorded 0.26 answers begin with)."""
    return TOOL_CALL_OPEN + '{"name": ' + json.dumps(name) + ', "arguments": '


@dataclass(frozen=True)
class ToolPlan:
    """The one tool call each choice makes: `kind` is auto, required or named; `tagged`: the
    call is written in the tool parser's `<tool_call>` format (required and named)."""

    kind: str
    name: str
    parameters: Any
    tagged: bool = False


@dataclass(frozen=True)
class Plan:
    n: int = 1
    top_logprobs: int | None = None  # None: no logprobs; 0: sampled tokens only
    schema: Any = None  # response_format's schema; {} for json_object; None: free text
    tool: ToolPlan | None = None

    def script(
        self, tok: FakeTokenizer, prompt: list[int], seed: int | None, index: int
    ) -> list[tuple[int, str]] | None:
        """The constrained output of choice `index`, or None for free text."""
        if self.tool is None and self.schema is None:
            return None
        words = _words(tok, prompt, seed, index)
        if self.tool is not None:
            value = instance_for(self.tool.parameters or {"type": "object"}, words=words)
            if self.tool.tagged:
                return _tagged(tok, self.tool.name, json.dumps(value, ensure_ascii=False))
        elif self.schema == {}:  # json_object: any object
            value = {"text": " ".join(words[:4])}
        else:
            value = instance_for(self.schema, words=words)
        return tok.split(json.dumps(value, ensure_ascii=False))


def _tagged(tok: FakeTokenizer, name: str, arguments: str) -> list[tuple[int, str]]:
    head, rest = (arguments[:1], arguments[1:]) if arguments.startswith("{") else ("", arguments)
    newline = tok.split("\n")
    padding = newline * ARGUMENT_PADDING if head else []
    return [*tok.split(tool_call_prefix(name) + head), *padding, *tok.split(rest + TOOL_CALL_CLOSE)]


def check_sampling(n: int | None, logprobs: int | None) -> int:
    """vLLM's SamplingParams checks, done when the request is added to the engine."""
    count = 1 if n is None else n
    if count < 1:
        raise VllmValidationError(f"n must be at least 1, got {count}.")
    if logprobs is not None and logprobs > MAX_LOGPROBS:
        raise VllmValidationError(
            f"Requested sample logprobs of {logprobs}, which is greater than max allowed: "
            f"{MAX_LOGPROBS}",
            param="logprobs",
            value=logprobs,
        )
    return count


def chat_plan(body: ChatCompletionRequest, *, auto_tools: bool, parser: str | None) -> Plan:
    tool = _tool_plan(body, auto_tools=auto_tools, parser=parser)
    schema = None if tool is not None else _response_schema(body.response_format)
    top = None
    if body.logprobs:
        top = MAX_LOGPROBS if body.top_logprobs == -1 else (body.top_logprobs or 0)
    n = check_sampling(body.n, top)
    plan = Plan(n=n, top_logprobs=top, schema=schema, tool=tool)
    try:  # a schema the emulator cannot satisfy fails now, as vLLM's grammar compile would
        plan.script(FakeTokenizer(64), [], None, 0)
    except UnsupportedSchemaError as exc:
        raise VllmValidationError(str(exc), param="response_format") from exc
    return plan


def _tool_plan(
    body: ChatCompletionRequest, *, auto_tools: bool, parser: str | None
) -> ToolPlan | None:
    choice = body.tool_choice
    if not body.tools or choice in (None, "none"):
        return None
    if choice == "auto" and not auto_tools:
        raise VllmValidationError(AUTO_TOOLS_DISABLED)
    functions = [t.get("function") or {} for t in body.tools]
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        function = next(f for f in functions if f.get("name") == name)
        kind = "named"
        if parser is None:  # recorded on the H200 (routes entry 9)
            raise VllmValidationError(
                f"tool_choice=function {json.dumps(name)} requires --tool-call-parser to be set"
            )
    else:
        function = functions[0]  # the emulator always calls the first tool
        kind = str(choice)
        if kind == "required" and parser is None:  # the same check as a named choice's
            raise VllmValidationError(
                'tool_choice="required" requires --tool-call-parser to be set'
            )
    return ToolPlan(
        kind, str(function.get("name", "")), function.get("parameters"), tagged=kind != "auto"
    )


def _response_schema(response_format: dict[str, Any] | None) -> Any:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise VllmValidationError(
                "response_format of type json_schema needs json_schema.schema (an object)",
                param="response_format",
            )
        return spec["schema"]
    raise VllmValidationError(
        f"response_format type {kind!r} is not supported by the vllm-switch emulator "
        "(text, json_object, json_schema)",
        param="response_format",
    )


def _words(tok: FakeTokenizer, prompt: list[int], seed: int | None, index: int) -> list[str]:
    digest = hashlib.blake2b(repr((prompt, seed, index)).encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest))
    return [tok.piece(rng.randrange(4, tok.vocab_size)).strip() for _ in range(8)]
