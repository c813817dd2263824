"""A simulated node's vLLM engine-argument file: vLLM's ``--config`` YAML, parsed and rendered.

Parsing reports problems the way ``vllm serve`` would (one line, argparse style) so a bad edit
shows up in the node's journal. This module only reads and writes text: it never decides what
the settings do to latency (that is :mod:`console.demo.engine_sim`).
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

ARGS_FILE = "/etc/vllm/args.yaml"

_INT_KEYS = ("max-num-batched-tokens", "max-num-seqs", "tensor-parallel-size", "max-model-len")
# Real vLLM flags the demo accepts and ignores, so a hand-edited file stays realistic.
_IGNORED_KEYS = frozenset(
    {
        "block-size",
        "disable-log-requests",
        "dtype",
        "enable-prefix-caching",
        "host",
        "kv-cache-dtype",
        "port",
        "seed",
        "swap-space",
        "trust-remote-code",
    }
)
_KNOWN_KEYS = frozenset(
    {
        "model",
        "served-model-name",
        "revision",
        "enable-chunked-prefill",
        "gpu-memory-utilization",
        *_INT_KEYS,
        *_IGNORED_KEYS,
    }
)


class EngineArgsError(ValueError):
    """The file would make ``vllm serve`` exit at start-up; the message is its one-line error."""


@dataclass(frozen=True)
class EngineArgs:
    model: str
    served_model_names: tuple[str, ...]
    revision: str
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    enable_chunked_prefill: bool = True
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 8
    max_model_len: int | None = None  # None: the model's own context length

    @property
    def served_model_name(self) -> str:
        """The name vLLM reports in responses and metric labels: the first served name."""
        return self.served_model_names[0]


def parse_engine_args(text: str) -> EngineArgs:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise EngineArgsError(f"Unable to read config file {ARGS_FILE}: {problem}") from exc
    if not isinstance(data, dict):
        raise EngineArgsError(f"Config file {ARGS_FILE} must contain a YAML mapping")
    unknown = sorted(str(k) for k in data if k not in _KNOWN_KEYS)
    if unknown:
        flags = " ".join(f"--{k}" for k in unknown)
        raise EngineArgsError(f"vllm serve: error: unrecognized arguments: {flags}")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise EngineArgsError("vllm serve: error: the following arguments are required: model")
    names = data.get("served-model-name", model)
    served = (names,) if isinstance(names, str) else tuple(names or ())
    if not served or not all(isinstance(n, str) and n for n in served):
        raise EngineArgsError("vllm serve: error: argument --served-model-name: expected strings")
    ints = {key: _int(data, key) for key in _INT_KEYS if key in data}
    chunked = data.get("enable-chunked-prefill", True)
    if not isinstance(chunked, bool):
        raise _invalid("enable-chunked-prefill", "bool", chunked)
    memory = data.get("gpu-memory-utilization", 0.9)
    if isinstance(memory, bool) or not isinstance(memory, int | float) or not 0 < memory <= 1:
        raise _invalid("gpu-memory-utilization", "float in (0, 1]", memory)
    return EngineArgs(
        model=model,
        served_model_names=served,
        revision=str(data.get("revision", "main")),
        max_num_batched_tokens=ints.get("max-num-batched-tokens", 8192),
        max_num_seqs=ints.get("max-num-seqs", 256),
        enable_chunked_prefill=chunked,
        gpu_memory_utilization=float(memory),
        tensor_parallel_size=ints.get("tensor-parallel-size", 1),
        max_model_len=ints.get("max-model-len"),
    )


def render_engine_args(args: EngineArgs) -> str:
    data: dict[str, object] = {
        "model": args.model,
        "served-model-name": (
            args.served_model_names[0]
            if len(args.served_model_names) == 1
            else list(args.served_model_names)
        ),
        "revision": args.revision,
        "tensor-parallel-size": args.tensor_parallel_size,
        "gpu-memory-utilization": args.gpu_memory_utilization,
        "max-num-batched-tokens": args.max_num_batched_tokens,
        "max-num-seqs": args.max_num_seqs,
        "enable-chunked-prefill": args.enable_chunked_prefill,
    }
    if args.max_model_len is not None:
        data["max-model-len"] = args.max_model_len
    return yaml.safe_dump(data, sort_keys=False)


def _int(data: dict, key: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(key, "int", value)
    return value


def _invalid(key: str, kind: str, value: object) -> EngineArgsError:
    return EngineArgsError(f"vllm serve: error: argument --{key}: invalid {kind} value: {value!r}")
