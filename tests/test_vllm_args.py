"""The packaged vLLM argument catalogues, and the checks made with them before a file changes."""

from __future__ import annotations

import pytest

from console.vllm_args import (
    Catalogue,
    catalogue_for,
    catalogues,
    check_args,
    parse_catalogue,
    resolve_args,
    version_key,
)


def catalogue(version: str) -> Catalogue:
    return next(c for c in catalogues() if c.version == version)


def test_catalogues_parse_with_the_row_counts_sources_md_gives() -> None:
    assert [(c.version, len(c.arguments)) for c in catalogues()] == [
        ("0.11.0", 185),
        ("0.33.0", 322),
    ]
    for c in catalogues():
        flags = [a.flag for a in c.arguments]
        assert "--help" in flags and "model_tag" in flags
        assert sum(f.startswith("--") for f in flags) == len(flags) - 1  # all but model_tag


def test_rows_keep_their_columns() -> None:
    c33 = catalogue("0.33.0")
    chunked = c33.lookup("enable-chunked-prefill")
    assert chunked is not None and not chunked.negative
    arg = chunked.argument
    assert (arg.dest, arg.group, arg.type, arg.boolean_optional) == (
        "enable_chunked_prefill",
        "SchedulerConfig",
        "bool",
        True,
    )
    assert arg.negative_forms == ("--no-enable-chunked-prefill", "--disable-chunked-prefill")
    disable = c33.lookup("disable-chunked-prefill")
    assert disable is not None and disable.negative and disable.argument is arg
    dtype = c33.lookup("dtype")
    assert dtype is not None and dtype.argument.choices_enforced
    assert "bfloat16" in dtype.argument.choices
    alias = c33.lookup("device-memory-utilization")
    assert alias is not None and alias.argument.flag == "--gpu-memory-utilization"


def test_a_catalogue_with_other_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="unexpected columns"):
        parse_catalogue("9.9.9", "# comment\nflag\tdest\n--x\tx\n")


def test_033_refuses_max_num_partial_prefills_with_the_reason_and_011_accepts_it() -> None:
    assert check_args(catalogue("0.33.0"), {"max-num-partial-prefills": 2}) == [
        "--max-num-partial-prefills is not an argument of vLLM 0.33.0 "
        "(it was in 0.11.0 and is gone)"
    ]
    assert check_args(catalogue("0.11.0"), {"max-num-partial-prefills": 2}) == []


def test_a_flag_only_newer_vllm_has_is_said_so() -> None:
    assert check_args(catalogue("0.11.0"), {"performance-mode": "throughput"}) == [
        "--performance-mode is not an argument of vLLM 0.11.0 (it is new in 0.33.0)"
    ]


def test_an_unknown_flag_gets_a_suggestion() -> None:
    assert check_args(catalogue("0.33.0"), {"max-num-batched-token": 2048}) == [
        "--max-num-batched-token is not an argument of vLLM 0.33.0 "
        "(did you mean --max-num-batched-tokens?)"
    ]


def test_dest_spelling_maps_to_the_flag_and_values_are_typed() -> None:
    resolved = resolve_args(
        catalogue("0.33.0"),
        {
            "max_num_batched_tokens": "2048",
            "enable-chunked-prefill": "false",
            "gpu-memory-utilization": "0.85",
            "max-model-len": "32k",  # vLLM's human_readable_int reads it; kept as written
            "served-model-name": ["a", "b"],
        },
        ["max_num_seqs"],
    )
    assert resolved.problems == []
    assert resolved.set == {
        "max-num-batched-tokens": 2048,
        "enable-chunked-prefill": False,
        "gpu-memory-utilization": 0.85,
        "max-model-len": "32k",
        "served-model-name": ["a", "b"],
    }
    assert resolved.unset == ("max-num-seqs",)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("max-num-seqs", "lots", "--max-num-seqs: expected an int, got 'lots'"),
        ("max-num-seqs", True, "--max-num-seqs: expected an int, got True"),
        (
            "gpu-memory-utilization",
            "most",
            "--gpu-memory-utilization: expected a number, got 'most'",
        ),
        (
            "enable-chunked-prefill",
            "yes",
            "--enable-chunked-prefill: expected true or false, got 'yes'",
        ),
        ("enforce-eager", 1, "--enforce-eager: expected true or false, got 1"),
        ("model", {"a": 1}, "--model: expected a string, got {'a': 1}"),
        (
            "speculative-config",
            "{not json",
            "--speculative-config: expected a mapping or JSON text",
        ),
        ("max-num-seqs", None, "--max-num-seqs: no value (to remove a flag, unset it)"),
    ],
)
def test_values_of_the_wrong_type_are_refused(key: str, value: object, problem: str) -> None:
    (found,) = check_args(catalogue("0.33.0"), {key: value})
    assert found.startswith(problem)


def test_json_flags_take_a_mapping_or_json_text() -> None:
    c33 = catalogue("0.33.0")
    assert check_args(c33, {"speculative-config": {"method": "ngram"}}) == []
    assert check_args(c33, {"speculative-config": '{"method": "ngram"}'}) == []


def test_enforced_choices_are_checked_and_open_ones_are_not() -> None:
    c33 = catalogue("0.33.0")
    assert check_args(c33, {"dtype": "bf16"}) == [
        "--dtype: 'bf16' is not one of its choices (did you mean 'bfloat16'?)"
    ]
    assert check_args(c33, {"dtype": "bfloat16", "uvicorn-log-level": "warning"}) == []
    assert check_args(catalogue("0.11.0"), {"uvicorn-log-level": "loud"}) == [
        "--uvicorn-log-level: 'loud' is not one of critical, debug, error, info, trace, warning"
    ]
    # Registry names vLLM checks after parsing (plugins may add some): not refused here.
    assert check_args(c33, {"tool-call-parser": "my-plugin-parser"}) == []
    # An int-valued choice: --max-lora-rank takes 1, 8, 16, ...
    assert check_args(c33, {"max-lora-rank": 16}) == []
    assert check_args(c33, {"max-lora-rank": 17})[0].startswith("--max-lora-rank: 17 is not one")


def test_a_flag_given_twice_or_both_set_and_unset_is_refused() -> None:
    c33 = catalogue("0.33.0")
    assert check_args(c33, {"enable-chunked-prefill": True, "disable-chunked-prefill": True}) == [
        "--enable-chunked-prefill is given twice "
        "(as enable-chunked-prefill and disable-chunked-prefill)"
    ]
    assert check_args(c33, {"max-num-seqs": 8}, ["max_num_seqs"]) == [
        "--max-num-seqs is both set and unset"
    ]


def test_unset_takes_flags_the_catalogue_no_longer_knows() -> None:
    # Removing a flag vLLM refuses is how a broken file is fixed.
    resolved = resolve_args(catalogue("0.33.0"), {}, ["max-num-partial-prefills"])
    assert resolved.problems == []
    assert resolved.unset == ("max-num-partial-prefills",)


@pytest.mark.parametrize(
    ("version", "chosen", "note"),
    [
        ("0.33.0", "0.33.0", ""),
        ("0.11.0+cu128", "0.11.0", ""),
        ("v0.11", "0.11.0", ""),
        (
            "0.20.1",
            "0.11.0",
            "vLLM 0.20.1: checked against the 0.11.0 catalogue, the newest not after it",
        ),
        (
            "0.40.0",
            "0.33.0",
            "vLLM 0.40.0 is newer than every catalogue: checked against the 0.33.0 catalogue, "
            "the newest (flags added since are unknown to it)",
        ),
        (
            "0.9.2rc1.dev3",
            "0.11.0",
            "vLLM 0.9.2rc1.dev3 is older than every catalogue: checked against the 0.11.0 "
            "catalogue, the oldest",
        ),
        (
            "0.33.0rc1",
            "0.33.0",
            "vLLM 0.33.0rc1: checked against the 0.33.0 catalogue, its release",
        ),
        (
            "0.11.1.dev5+g1234abc",
            "0.11.0",
            "vLLM 0.11.1.dev5+g1234abc: checked against the 0.11.0 catalogue, "
            "the newest not after it",
        ),
    ],
)
def test_catalogue_for_a_version(version: str, chosen: str, note: str) -> None:
    found, said = catalogue_for(version)
    assert (found.version, said) == (chosen, note)


def test_versions_order_as_pep_440_does() -> None:
    ordered = ["0.9.2.dev1", "0.9.2rc1.dev3", "0.9.2rc1", "0.9.2", "0.9.2.post1", "0.10.0"]
    assert sorted(ordered, key=version_key) == ordered


def test_text_that_is_no_version_is_refused() -> None:
    with pytest.raises(ValueError, match="'main' is not a vLLM version"):
        catalogue_for("main")
