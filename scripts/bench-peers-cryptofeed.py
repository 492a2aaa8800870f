"""cryptofeed's Binance message handler on the frames of scripts/bench-peers, offline.

Usage: python bench-peers-cryptofeed.py FRAMES_FILE STEPS [ROUNDS]

cryptofeed normally downloads Binance's exchangeInfo to build its symbol table when a feed is
created. Here the table is injected instead (Symbols.set with the output of the exchange's own
_parse_symbol_data on a synthetic exchangeInfo naming the frames' symbols), so nothing touches
the network; then Binance.message_handler -- the coroutine cryptofeed's connection handler
awaits for every WebSocket message -- runs on each frame: yapic JSON decode, stream dispatch,
symbol normalisation, Decimal prices, a Ticker object, and the TICKER callback.

Prints: mode=cryptofeed ns_per_frame=<best of ROUNDS (3)>.
"""
import asyncio
import json
import sys
import time
from decimal import Decimal

from cryptofeed.defines import BINANCE, TICKER
from cryptofeed.exchanges import Binance
from cryptofeed.symbols import Symbols


def main():
    path, steps = sys.argv[1], int(sys.argv[2])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    with open(path) as f:
        frames = [line.rstrip("\n") for line in f if line.strip()]
    names = sorted({json.loads(fr)["data"]["s"] for fr in frames})
    info = {
        "symbols": [
            {
                "symbol": s,
                "baseAsset": s[:-4],
                "quoteAsset": s[-4:],
                "status": "TRADING",
                "filters": [{"tickSize": "0.00000001"}],
            }
            for s in names
        ]
    }
    normalized, extra = Binance._parse_symbol_data(info)
    Symbols.set(BINANCE, normalized, extra)

    seen = []

    async def on_ticker(t, receipt_timestamp):
        if len(seen) < 1:
            seen.append(t)

    feed = Binance(symbols=list(normalized.keys()), channels=[TICKER], callbacks={TICKER: on_ticker})

    async def run(n):
        ts = time.time()
        handler = feed.message_handler
        m = len(frames)
        for i in range(n):
            await handler(frames[i % m], None, ts)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(run(len(frames)))  # warm-up, and a sanity check below
    first = json.loads(frames[0])["data"]
    t = seen[0]
    assert t.bid == Decimal(first["b"]) and t.ask == Decimal(first["a"]), (t, first)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        loop.run_until_complete(run(steps))
        best = min(best, (time.perf_counter_ns() - t0) / steps)
    print(f"mode=cryptofeed ns_per_frame={best:.1f} symbols={len(names)} frames={len(frames)}")


if __name__ == "__main__":
    main()
