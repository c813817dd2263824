"""Property: whatever an engine's /metrics or nvidia-smi prints, every cell is a figure or a word.

From arbitrary exposition text and arbitrary nvidia-smi CSV, through the parsers, the rolling
window, the aggregation and the cell formatting, to the rendered cells and `status --json`:
no cell ever shows NaN or an infinity, nothing raises but the parsers' own "cannot
understand this" errors, and the JSON is strict JSON (issue 7, item 2).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.engines import EngineError, engine_stats_from_text
from backends.gpu import QUERY_FIELDS, GpuQueryError, parse_query_csv
from console.aggregate import fleet_snapshot
from console.cli import _jsonable
from console.collectors import FleetReadings
from console.config import Config, load_config
from console.models import SourceStatus
from screens.cells import endpoint_cells, gpu_cells, node_cells

LABELS = 'engine="{rank}",model_name="m"'
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
COUNTERS = ("vllm:num_preemptions_total", "vllm:prompt_tokens_total")
HISTOGRAMS = (
    "vllm:e2e_request_latency_seconds",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
)
ODD_NUMBERS = ("NaN", "+Inf", "-Inf", "1e309", "-0", "0x10", "", "nan", "1_000")

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(ODD_NUMBERS),
)
bounds = st.one_of(
    st.sampled_from(("0.1", "1.0", "5.0", "10.0", "+Inf", "NaN", "-1", "x")),
    st.floats(allow_nan=False).map(repr),
)


@st.composite
def metric_lines(draw: st.DrawFn) -> str:
    rank = draw(st.integers(0, 2))
    labels = LABELS.format(rank=rank)
    kind = draw(st.sampled_from(("gauge", "counter", "bucket", "sum", "count", "success", "junk")))
    value = draw(numbers)
    if kind == "gauge":
        return f"{draw(st.sampled_from(GAUGES))}{{{labels}}} {value}"
    if kind == "counter":
        return f"{draw(st.sampled_from(COUNTERS))}{{{labels}}} {value}"
    if kind == "success":
        reason = draw(st.sampled_from(("stop", "length", "error", "abort")))
        return f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {value}'
    family = draw(st.sampled_from(HISTOGRAMS))
    if kind == "bucket":
        return f'{family}_bucket{{{labels},le="{draw(bounds)}"}} {value}'
    if kind in ("sum", "count"):
        return f"{family}_{kind}{{{labels}}} {value}"
    return draw(st.text(max_size=40))


@st.composite
def metrics_texts(draw: st.DrawFn) -> str:
    lines = ["# TYPE vllm:num_requests_running gauge"]
    for family in HISTOGRAMS:
        if draw(st.booleans()):
            lines.append(f"# TYPE {family} histogram")
    lines += draw(st.lists(metric_lines(), max_size=25))
    return "\n".join(lines) + "\n"


cells_values = st.one_of(
    st.sampled_from(("[N/A]", "[Not Supported]", "[GPU is lost]", "[Unknown Error]", "N/A")),
    numbers,
    st.sampled_from(("P0", "P8", "0x0000000000000004", "0x00000000000000FF", "Enabled")),
    st.text(alphabet=st.characters(blacklist_characters=",\n\r\"'"), max_size=12),
)


@st.composite
def nvidia_smi_csvs(draw: st.DrawFn) -> str:
    header = ", ".join(QUERY_FIELDS)
    rows = []
    for index in range(draw(st.integers(0, 4))):
        values = [draw(cells_values) for _ in QUERY_FIELDS]
        values[0] = str(index) if draw(st.integers(0, 9)) else draw(cells_values)
        rows.append(", ".join(values))
    return "\n".join([header, *rows]) + "\n"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    folder: Path = tmp_path_factory.mktemp("property")
    (folder / "known_hosts").write_text("")
    path = folder / "config.yaml"
    path.write_text(
        """
environment: test
ssh: {known_hosts: known_hosts}
nodes:
  - {name: gpu-a1, host: 127.0.0.1, gpus: 4, cost_per_hour_usd: 9.8, engine: {kind: vllm}}
endpoints:
  - {name: chat, kind: openai, base_url: "http://127.0.0.1:8000/v1", model: m, nodes: [gpu-a1]}
"""
    )
    return load_config(path)


def assert_shows_no_non_figure(cells: tuple[str, ...]) -> None:
    for cell in cells:
        text = cell.lower()
        assert "nan" not in text and "inf" not in text, cells


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=metrics_texts(), second=metrics_texts(), csv=nvidia_smi_csvs())
def test_any_metrics_and_nvidia_smi_text_render_as_figures_or_words(
    config: Config, first: str, second: str, csv: str
) -> None:
    readings = FleetReadings(window_s=60.0, probe_window_s=300.0)
    window = readings.engine_window("gpu-a1")
    for ts, text in ((100.0, first), (110.0, second)):
        # "No Prometheus samples at all" fails the source, as it should: nothing else.
        with contextlib.suppress(EngineError):
            window.add(ts, engine_stats_from_text("gpu-a1", text))
    # Output that cannot be understood at all fails the GPU source, nothing else.
    with contextlib.suppress(GpuQueryError):
        readings.gpus["gpu-a1"] = tuple(parse_query_csv("gpu-a1", csv))
    statuses = {
        name: SourceStatus(name, 2.0, last_ok_at=110.0)
        for name in ("gpus:gpu-a1", "engine:gpu-a1", "probe:chat")
    }
    snapshot = fleet_snapshot(config, readings, statuses, now=110.0, window_s=60.0)
    limits = snapshot.thresholds
    for endpoint in snapshot.endpoints:
        assert_shows_no_non_figure(endpoint_cells(endpoint, limits))
    for node in snapshot.nodes:
        assert_shows_no_non_figure(node_cells(node, limits))
        for gpu in node.gpus:
            assert_shows_no_non_figure(gpu_cells(gpu, limits, stale=False))
    json.dumps(_jsonable(snapshot), allow_nan=False)  # strict JSON, or this raises
