#!/usr/bin/env python3
"""The SM clock and power of a GPU while it worked, from nvidia-smi's samples
(--query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv,noheader -lms 100): the samples
drawing more than WATTS (default 400: a training step's, not loading's or idling's), their clock and power, and how many
report the software power cap (throttle reason bit 0x4).
    python3 scripts/power_summary.py SAMPLES.csv [WATTS]
"""
import statistics
import sys


def samples(path):
    """(time, MHz, W, reasons) per well-formed line; a line cut short when the sampler was stopped is skipped."""
    out = []
    with open(path) as f:
        for line in f:
            cols = [c.strip() for c in line.split(",")]
            try:
                out.append((cols[0], int(cols[1].split()[0]), float(cols[2].split()[0]), int(cols[-1], 16)))
            except (IndexError, ValueError):
                continue
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    watts = float(sys.argv[2]) if len(sys.argv) > 2 else 400.0
    busy = [s for s in samples(sys.argv[1]) if s[2] > watts]
    if not busy:
        sys.exit(f"{sys.argv[1]}: no sample above {watts:g} W")
    mhz, w = [s[1] for s in busy], [s[2] for s in busy]
    capped = sum(1 for s in busy if s[3] & 0x4)
    print(f"{len(busy)} samples above {watts:g} W, {busy[0][0]} .. {busy[-1][0]}: SM clock min {min(mhz)}, median "
          f"{statistics.median(mhz):g}, mean {statistics.mean(mhz):.0f}, max {max(mhz)} MHz; power median "
          f"{statistics.median(w):.0f}, mean {statistics.mean(w):.0f}, max {max(w):.0f} W; power cap in {capped}")


if __name__ == "__main__":
    main()
