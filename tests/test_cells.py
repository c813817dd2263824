"""Row cells: what an engineer reads for a GPU, a node and an endpoint, alarms included."""

from __future__ import annotations

from dataclasses import replace

from backends.gpu import parse_query_csv
from console.models import EndpointRow, GpuRow, NodeRow, SourceStatus, Thresholds
from screens.cells import endpoint_cells, endpoint_detail, gpu_cells, node_cells
from screens.formatting import Alarm
from tests.conftest import FIXTURES

LIMITS = Thresholds()
(READING,) = parse_query_csv("gpu-a1", (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text())
OK = SourceStatus("gpus:gpu-a1", 2.0, last_ok_at=1.0)


def node(*readings, expected=None) -> NodeRow:
    return NodeRow(
        name="gpu-a1",
        host="10.0.3.11",
        gpus=tuple(GpuRow(r) for r in readings),
        kv_cache_pct=None,
        running=None,
        waiting=None,
        preemptions_per_s=None,
        cost_per_hour_usd=9.8,
        gpu_status=OK,
        expected_gpus=expected,
    )


def test_a_lost_gpu_is_an_alarm_on_its_row_and_its_node() -> None:
    lost = replace(
        READING, index=3, lost=True, util_pct=None, temperature_c=None, clock_events=None
    )
    cells = gpu_cells(GpuRow(lost), LIMITS, stale=False)
    assert cells[1] == "GPU LOST" and isinstance(cells[1], Alarm)
    assert cells[2] == "N/A"
    state = node_cells(node(READING, lost), LIMITS)[1]
    assert state == "GPU LOST" and isinstance(state, Alarm)


def test_uncorrected_ecc_errors_are_an_alarm() -> None:
    cells = gpu_cells(GpuRow(replace(READING, ecc_uncorrected=2)), LIMITS, stale=False)
    assert cells[1] == "ECC 2 uncorr" and isinstance(cells[1], Alarm)


def test_a_missing_gpu_is_an_alarm_on_the_node() -> None:
    readings = [replace(READING, index=i) for i in range(6)]
    state = node_cells(node(*readings, expected=8), LIMITS)[1]
    assert state == "6/8 GPU" and isinstance(state, Alarm)
    assert node_cells(node(*readings, expected=6), LIMITS)[1] == "6 GPU"


def test_clock_events_are_words_and_slowdowns_alarm() -> None:
    capped = gpu_cells(GpuRow(replace(READING, clock_events=("power cap",))), LIMITS, False)
    assert capped[1] == "power cap" and not isinstance(capped[1], Alarm)
    hot = replace(READING, clock_events=("power cap", "HW thermal"))
    assert gpu_cells(GpuRow(hot), LIMITS, False)[1] == Alarm("HW thermal")
    idle = gpu_cells(GpuRow(replace(READING, clock_events=("idle",))), LIMITS, False)
    assert idle[1] == ""  # an idle GPU is not news


def endpoint(**changes) -> EndpointRow:
    row = EndpointRow(
        name="chat",
        kind="openai",
        model="m",
        served_model="m",
        p50_s=0.2,
        p95_s=0.9,
        p99_s=12.0,
        ttft_p95_s=0.1,
        requests_per_s=3.0,
        error_pct=0.0,
        source="engine",
        n=412,
        status=SourceStatus("probe:chat", 10.0, last_ok_at=1.0),
    )
    return replace(row, **changes)


def test_an_endpoint_row_says_where_its_figures_come_from_and_on_how_many() -> None:
    assert endpoint_cells(endpoint(), LIMITS)[1] == "ok eng"
    assert endpoint_cells(endpoint(source="engine lifetime", n=7), LIMITS)[1] == "ok life n=7"
    assert endpoint_cells(endpoint(source="probe", n=5), LIMITS)[1] == "ok probe n=5"


def test_a_quantile_in_the_inf_bucket_is_shown_as_a_floor() -> None:
    cells = endpoint_cells(endpoint(floors=frozenset({"p99"}), p99_s=10.0), LIMITS)
    assert cells[4] == ">10s"


def test_a_single_probe_is_one_value_not_three_percentiles() -> None:
    row = endpoint(source="probe", n=1, p50_s=5.2, p95_s=None, p99_s=None)
    cells = endpoint_cells(row, LIMITS)
    assert cells[1] == "ok probe n=1"
    assert cells[2:5] == ("5.20s", "N/A", "N/A")
    assert isinstance(cells[2], Alarm)  # one slow request past the P95 limit still alarms


def test_the_endpoint_detail_says_where_the_figures_come_from() -> None:
    row = endpoint(
        engines=2, engines_stale=1, engines_used=1, window_s=58.0, n=412, gpu_cost_per_hour_usd=19.6
    )
    assert endpoint_detail(row) == (
        "chat: figures from engine histograms of 1 node(s) over 58s (412 requests); "
        "1 of 2 engines STALE, left out; GPU nodes $19.60/h"
    )
    api = endpoint(source="probe", n=1, window_s=None, probe_spend_per_hour_usd=0.0046)
    assert endpoint_detail(api) == (
        "chat: figures from the console's own probes (1 request); "
        "the console's probes spend <$0.01/h (other traffic to it is not seen)"
    )
