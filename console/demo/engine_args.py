"""A simulated node's vLLM engine-argument file: vLLM's ``--config`` YAML, parsed and rendered.

Parsing reports problems the way ``vllm serve`` would (one line, argparse style) so a bad edit
shows up in the node's journal. Every option vLLM 0.33 registers is accepted (those the
simulator does not model are ignored) and any other refused, so an argument a newer vLLM
removed fails the start as it would on a real node. This module only reads and writes text:
it never decides what the settings do to latency (that is :mod:`console.demo.engine_sim`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

ARGS_FILE = "/etc/vllm/args.yaml"
# Every option `vllm serve` 0.33 registers (derived from its source; see console/data/vllm).
_CATALOGUE = "engine-args-v0.33.0-derived.tsv"
_INT_KEYS = (
    "max_num_batched_tokens",
    "max_num_seqs",
    "tensor_parallel_size",
    "max_model_len",
)


@dataclass(frozen=True)
class _Option:
    dest: str  # argparse's attribute name, the key vLLM logs
    flag: str  # the primary option string, for error messages
    negative: bool  # a --no-X / --disable-X form: sets the bool ``dest`` to False


@cache
def _options() -> dict[str, _Option]:
    """Every long option string vLLM 0.33 accepts (flags, aliases, negative forms)."""
    text = (resources.files("console") / "data" / "vllm" / _CATALOGUE).read_text()
    rows = csv.DictReader(
        (line for line in text.splitlines() if not line.startswith("#")), delimiter="\t"
    )
    options: dict[str, _Option] = {}
    for row in rows:
        flag = row["flag"]
        if not flag.startswith("--"):
            continue  # the positional model_tag
        same = [flag, *(a for a in row["aliases"].split(",") if a.startswith("--"))]
        for option in same:
            options[option] = _Option(row["dest"], flag, negative=False)
        for option in filter(None, row["negative_forms"].split(",")):
            options[option] = _Option(row["dest"], flag, negative=True)
    return options


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
    return parse_engine_file(text)[0]


def parse_engine_file(text: str) -> tuple[EngineArgs, dict[str, object]]:
    """The settings the simulator models, and what vLLM logs as ``non-default args``: every key
    of the file under its argparse name (``max_num_batched_tokens``), in file order."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise EngineArgsError(f"Unable to read config file {ARGS_FILE}: {problem}") from exc
    if not isinstance(data, dict):
        raise EngineArgsError(f"Config file {ARGS_FILE} must contain a YAML mapping")
    settings = _settings(data)
    model = settings.get("model")
    if not isinstance(model, str) or not model:
        raise EngineArgsError("vllm serve: error: the following arguments are required: model")
    names = settings.get("served_model_name", model)
    served = (names,) if isinstance(names, str) else tuple(names) if isinstance(names, list) else ()
    if not served or not all(isinstance(n, str) and n for n in served):
        raise EngineArgsError("vllm serve: error: argument --served-model-name: expected strings")
    if "served_model_name" in settings:
        settings["served_model_name"] = list(served)  # nargs="+": vLLM holds a list
    ints = {key: _int(settings, key) for key in _INT_KEYS if key in settings}
    chunked = settings.get("enable_chunked_prefill", True)
    if not isinstance(chunked, bool):
        raise _invalid("enable_chunked_prefill", "bool", chunked)
    memory = settings.get("gpu_memory_utilization", 0.9)
    if isinstance(memory, bool) or not isinstance(memory, int | float) or not 0 < memory <= 1:
        raise _invalid("gpu_memory_utilization", "float in (0, 1]", memory)
    args = EngineArgs(
        model=model,
        served_model_names=served,
        revision=str(settings.get("revision", "main")),
        max_num_batched_tokens=ints.get("max_num_batched_tokens", 8192),
        max_num_seqs=ints.get("max_num_seqs", 256),
        enable_chunked_prefill=chunked,
        gpu_memory_utilization=float(memory),
        tensor_parallel_size=ints.get("tensor_parallel_size", 1),
        max_model_len=ints.get("max_model_len"),
    )
    return args, settings


def _settings(data: dict) -> dict[str, object]:
    """The file's keys resolved as vLLM's parser does: ``_`` and ``-`` alike, negative forms,
    unambiguous prefixes (argparse's abbreviations); unknown keys refused together."""
    options = _options()
    settings: dict[str, object] = {}
    unknown = []
    for key, value in data.items():
        option = "--" + str(key).replace("_", "-")
        found = options.get(option)
        if found is None:
            matches = sorted(o for o in options if o.startswith(option))
            if len(matches) > 1:
                raise EngineArgsError(
                    f"vllm serve: error: ambiguous option: {option} could match "
                    + ", ".join(matches)
                )
            if not matches:
                unknown.append(option)
                continue
            found = options[matches[0]]
        if found.negative:
            if value is not True:  # vLLM's --config drops a false flag
                continue
            value = False
        settings[found.dest] = value
    if unknown:
        flags = " ".join(sorted(unknown))
        raise EngineArgsError(f"vllm serve: error: unrecognized arguments: {flags}")
    return settings


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


def with_revision(text: str, revision: str) -> str:
    """The file ``text`` (already parsed fine) with its ``revision`` replaced, all else kept."""
    data = yaml.safe_load(text)
    data["revision"] = revision
    return yaml.safe_dump(data, sort_keys=False)


def _int(settings: dict[str, object], dest: str) -> int:
    value = settings[dest]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(dest, "int", value)
    return value


def _invalid(dest: str, kind: str, value: object) -> EngineArgsError:
    flag = "--" + dest.replace("_", "-")
    return EngineArgsError(f"vllm serve: error: argument {flag}: invalid {kind} value: {value!r}")
