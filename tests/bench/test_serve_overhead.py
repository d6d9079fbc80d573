"""bench/serve_overhead.py's verdict rows, from per-round timings (the measuring itself needs
vLLM and minutes; tests/serve runs the service it measures)."""

from __future__ import annotations

from bench.serve_overhead import rows_of


def cells(ratio_of_round) -> dict:
    """Two cells of 13 rounds; the in-process side makes 1000 tokens in 10 s every round, the
    gRPC side the same tokens in 10 s ÷ ratio_of_round(r)."""
    out = {}
    for cell in (("unary", 8), ("stream", 32)):
        out[cell] = {"seconds": {"inproc": [10.0] * 13, "grpc": [10.0 / ratio_of_round(r) for r in range(13)]},
                     "tokens": {"inproc": [1000] * 13, "grpc": [1000] * 13},
                     "front_cpu": {"inproc": 1.0, "grpc": 1.0}, "core_cpu": {"inproc": 20.0, "grpc": 20.0},
                     "client_cpu": 0.5, "same": 13, "requests": 13}
    return {"cells": out, "transformers": None}


def row(rows, metric: str) -> tuple[str, str, str]:
    return next(r for r in rows if r[0] == metric)


def test_a_steady_ten_percent_cost_is_called_a_cost():
    rows = rows_of(cells(lambda r: 0.90 + 0.01 * (r % 3 - 1)), 13)
    pooled = row(rows, "gRPC ÷ in-process, every cell's rounds pooled")
    assert abs(float(pooled[1]) - 0.90) < 0.005
    assert "costs more than 3%" in pooled[2]
    assert row(rows, "all cells meet gRPC ÷ in-process >= 0.97")[1] == "no"


def test_no_cost_within_small_noise_is_called_met():
    rows = rows_of(cells(lambda r: 1.0 + 0.01 * (r % 3 - 1)), 13)
    assert "costs less than 3%" in row(rows, "gRPC ÷ in-process, every cell's rounds pooled")[2]
    assert row(rows, "all cells meet gRPC ÷ in-process >= 0.97")[1] == "yes"
    cell = row(rows, "gRPC ÷ in-process (stream, concurrency 32)")
    assert "geometric mean 0.99" in cell[2] or "geometric mean 1.00" in cell[2]
    assert "95% CI [" in cell[2]


def test_a_two_percent_cost_in_wide_noise_cannot_be_told_from_the_goal():
    rows = rows_of(cells(lambda r: 0.98 * 1.15 ** (r % 3 - 1)), 13)  # rounds 0.85-1.13, as on the 2-core VM
    assert "cannot tell" in row(rows, "gRPC ÷ in-process, every cell's rounds pooled")[2]
