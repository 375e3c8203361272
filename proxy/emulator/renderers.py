"""vLLM 0.26.0 chat and completion bodies and SSE chunks, key for key, for n choices.

A renderer is one completion's identity (id, created, model, fingerprint) plus what the request
asked for (logprobs, a tool call). It owns that and a per-choice record of what was streamed
so far (token position, whether the role chunk or the tool call's header went out); only the
route that built it calls it, between two awaits. Keys come in the order vLLM serialises them,
so a recorded response and an emulated one differ only in ids, timestamps and generated text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from proxy.emulator.engine_request import Output
from proxy.emulator.logprobs import chat_logprobs, completion_logprobs
from proxy.emulator.options import TOOL_CALL_CLOSE, Plan, tool_call_prefix
from proxy.emulator.protocol import new_id, sse, usage
from proxy.emulator.tokenizer import FakeTokenizer


class Renderer:
    prefix = ""
    chunk_object = ""

    def __init__(self, model: str, fp: str, tok: FakeTokenizer, plan: Plan) -> None:
        self.id = new_id(self.prefix)
        self.created = int(time.time())
        self.model = model
        self.fp = fp
        self.tok = tok
        self.plan = plan
        self.position = [0] * plan.n  # tokens streamed per choice
        self.tool_ids = [new_id("chatcmpl-tool") for _ in range(plan.n)]

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def usage_chunk(self, prompt: int, completion: int) -> str:
        body = self._chunk(
            [], usage=usage(prompt, completion, details=False), system_fingerprint=self.fp
        )
        return sse(body)

    def first(self) -> list[str]:
        """Chunks sent when the engine produces the first output of any choice."""
        return []

    def step(self, index: int, out: Output, *, include_usage: bool) -> list[str]:
        raise NotImplementedError


class ChatRenderer(Renderer):
    prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def first(self) -> list[str]:
        return [
            sse(
                self._chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                    prompt_token_ids=None,
                    prompt_text=None,
                )
            )
            for i in range(self.plan.n)
        ]

    def _logprobs(self, outputs: Sequence[Output], start: int) -> dict[str, Any] | None:
        top = self.plan.top_logprobs
        return None if top is None else chat_logprobs(self.tok, outputs, start, top)

    def __init__(self, model: str, fp: str, tok: FakeTokenizer, plan: Plan) -> None:
        super().__init__(model, fp, tok, plan)
        self.texts = [""] * plan.n  # a tagged call's `<tool_call>` text so far, per choice
        self.sent = [0] * plan.n  # characters of its arguments streamed, per choice

    def finish_reason(self, reason: str) -> str:
        if self.plan.tool is not None and reason == "stop":
            return "tool_calls"  # a parsed call; a call cut short by max_tokens stays "length"
        return reason

    def arguments_piece(self, index: int, out: Output) -> str:
        """The part of a call's arguments that `out` adds. A tagged call's text is parsed as
        the hermes streaming parser does: nothing until the prefix is complete, the closing
        `}\n</tool_call>` held back (flushed as arguments if the call is cut short)."""
        tool = self.plan.tool
        if tool is None or not tool.tagged:
            return out.text
        self.texts[index] += out.text
        text, start = self.texts[index], len(tool_call_prefix(tool.name))
        end = len(text)
        if out.finish_reason is None or text.endswith(TOOL_CALL_CLOSE):
            end -= len(TOOL_CALL_CLOSE)
        piece = text[start + self.sent[index] : max(end, start)]
        self.sent[index] += len(piece)
        return piece

    def _delta(self, index: int, out: Output) -> dict[str, Any]:
        tool = self.plan.tool
        if tool is None:
            return {"content": out.text}
        first = self.sent[index] == 0 if tool.tagged else self.position[index] == 0
        piece = self.arguments_piece(index, out)
        if not piece:
            return {}
        call: dict[str, Any]
        if first:  # the first piece carries the call's id and name
            call = {
                "id": self.tool_ids[index],
                "type": "function",
                "index": 0,
                "function": {"name": tool.name, "arguments": piece},
            }
        else:
            call = {"index": 0, "function": {"arguments": piece}}
        return {"tool_calls": [call]}

    def step(self, index: int, out: Output, *, include_usage: bool) -> list[str]:
        choice: dict[str, Any] = {
            "index": index,
            "delta": self._delta(index, out),
            "logprobs": self._logprobs([out], self.position[index]),
            "finish_reason": None,
        }
        if out.token_id is not None:
            self.position[index] += 1
        if out.finish_reason is None:
            choice["token_ids"] = None
            return [sse(self._chunk([choice]))]
        choice["finish_reason"] = self.finish_reason(out.finish_reason)
        choice["stop_reason"] = None
        choice["token_ids"] = None
        fingerprint = {} if include_usage else {"system_fingerprint": self.fp}
        return [sse(self._chunk([choice], **fingerprint))]

    def message(self, index: int, text: str) -> dict[str, Any]:
        tool = self.plan.tool
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
        }
        arguments: str | None = text
        if tool is not None and tool.tagged:  # the hermes parser: a complete call, or text
            prefix = tool_call_prefix(tool.name)
            complete = text.startswith(prefix) and text.endswith(TOOL_CALL_CLOSE)
            arguments = text[len(prefix) : -len(TOOL_CALL_CLOSE)] if complete else None
        if tool is not None and arguments is not None:
            message["content"] = None  # a parsed call leaves no text
            message["tool_calls"] = [
                {
                    "id": self.tool_ids[index],
                    "type": "function",
                    "function": {"name": tool.name, "arguments": arguments},
                }
            ]
        message["reasoning"] = None
        return message

    def full(
        self, choices: Sequence[Sequence[Output]], prompt: int, completion: int
    ) -> dict[str, Any]:
        rendered = []
        for i, outputs in enumerate(choices):
            text = "".join(o.text for o in outputs)
            finish = outputs[-1].finish_reason or "stop"
            rendered.append(
                {
                    "index": i,
                    "message": self.message(i, text),
                    "logprobs": self._logprobs(outputs, 0),
                    "finish_reason": self.finish_reason(finish),
                    "stop_reason": None,
                    "token_ids": None,
                    "routed_experts": None,
                }
            )
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": rendered,
            "service_tier": None,
            "system_fingerprint": self.fp,
            "usage": usage(prompt, completion),
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }


class CompletionRenderer(Renderer):
    prefix = "cmpl"
    chunk_object = "text_completion"

    def __init__(
        self, model: str, fp: str, tok: FakeTokenizer, plan: Plan, *, echo: str = ""
    ) -> None:
        super().__init__(model, fp, tok, plan)
        self.echo = echo
        self.offset = [len(echo)] * plan.n  # text offset of the next token, per choice

    def _logprobs(self, index: int, outputs: Sequence[Output], start: int) -> Any:
        top = self.plan.top_logprobs
        if top is None:
            return None
        lp = completion_logprobs(self.tok, outputs, start, top, self.offset[index])
        self.offset[index] += sum(len(o.text) for o in outputs)
        return lp

    def step(self, index: int, out: Output, *, include_usage: bool) -> list[str]:
        choice = {
            "index": index,
            "text": out.text,
            "logprobs": self._logprobs(index, [out], self.position[index]),
            "finish_reason": out.finish_reason,
            "stop_reason": None,
            "prompt_token_ids": None,
            "token_ids": None,
        }
        if out.token_id is not None:
            self.position[index] += 1
        final = out.finish_reason is not None and not include_usage
        return [sse(self._chunk([choice], **({"system_fingerprint": self.fp} if final else {})))]

    def full(
        self, choices: Sequence[Sequence[Output]], prompt: int, completion: int
    ) -> dict[str, Any]:
        rendered = [
            {
                "index": i,
                "text": self.echo + "".join(o.text for o in outputs),
                "logprobs": self._logprobs(i, outputs, 0),
                "finish_reason": outputs[-1].finish_reason or "stop",
                "stop_reason": None,
                "token_ids": None,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "routed_experts": None,
            }
            for i, outputs in enumerate(choices)
        ]
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": rendered,
            "service_tier": None,
            "system_fingerprint": self.fp,
            "usage": usage(prompt, completion),
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
