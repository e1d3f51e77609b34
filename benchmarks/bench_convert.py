"""Stream a large synthetic raw file through a converter; report rows/s and the converter's peak RSS.

The file is in OpenThoughts2's schema (Parquet, `conversations: list<struct<from, value>>`,
`source`), with `<think>` traces in the answers and 10% of rows that the converter drops (removed
sources, code), so the measured path is the real one: Parquet batches -> mapping -> think
stripping -> validation -> JSONL. Text is random lowercase "words" (snappy cannot shrink it, so
the on-disk size is the amount of text read). The conversion runs as `hrm-text data convert` in a
child process; its peak RSS is the child's `ru_maxrss`, so generating the file does not count.

    python benchmarks/bench_convert.py --gb 2.0 --dir /tmp/bench_convert [--keep]
    python benchmarks/bench_convert.py --gb 0.05            # a quick smoke run

Prints one JSON line (also written to DIR/result.json) and deletes the big files unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_GROUP = 4096


def _texts(rng: np.random.Generator, n: int, mean_len: int) -> list[str]:
    """n random strings of lowercase letters and spaces, lengths around mean_len."""
    lens = rng.integers(mean_len // 2, mean_len * 3 // 2, size=n)
    buf = rng.integers(97, 123, size=int(lens.sum()), dtype=np.uint8)
    buf[rng.random(buf.size) < 0.17] = 32  # ~6-letter words
    raw = buf.tobytes().decode("ascii")
    out, pos = [], 0
    for k in lens:
        out.append(raw[pos : pos + k])
        pos += int(k)
    return out


def generate(path: Path, target_bytes: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    schema = pa.schema([
        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
        ("question", pa.string()), ("source", pa.string()), ("id", pa.string()),
    ])
    rows = 0
    with pq.ParquetWriter(path, schema, compression="snappy") as w:
        while path.stat().st_size < target_bytes:
            n = ROWS_PER_GROUP
            qs, th, ans = _texts(rng, n, 300), _texts(rng, n, 3000), _texts(rng, n, 600)
            kind = rng.random(n)
            conv, src = [], []
            for i in range(n):
                a = f"<think>{th[i]}</think>\n{ans[i]}"
                if kind[i] < 0.05:
                    a += "\n```\ncode\n```"  # dropped: code
                conv.append([{"from": "user", "value": qs[i]}, {"from": "assistant", "value": a}])
                src.append("sharegpt" if 0.05 <= kind[i] < 0.10 else "ai2-adapt-dev/openmath-2-math")  # 5% removed source
            w.write_table(pa.table({"conversations": conv, "question": qs, "source": src, "id": [None] * n}, schema=schema))
            rows += n
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0, help="size of the synthetic Parquet file in GB (10^9 bytes)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench_convert"))
    ap.add_argument("--batch-rows", type=int, default=1024)
    ap.add_argument("--keep", action="store_true", help="keep the input and output files")
    a = ap.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    raw, out = a.dir / "openthoughts2_synthetic.parquet", a.dir / "out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    rows = generate(raw, int(a.gb * 1e9))
    gen_s = time.time() - t0
    size = raw.stat().st_size
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "hrm_text.cli", "data", "convert", "openthoughts2", str(raw), "--out", str(out),
           "--batch-rows", str(a.batch_rows)]
    t1 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    conv_s = time.time() - t1
    if proc.returncode != 0:
        sys.exit(f"convert failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    rep = json.loads((out / "convert_reports" / "openthoughts2.json").read_text())
    out_bytes = sum(f.stat().st_size for f in out.rglob("*.jsonl"))
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "input_bytes": size, "input_rows": rows, "generate_s": round(gen_s, 1),
        "convert_s": round(conv_s, 1), "rows_per_s": round(rows / conv_s), "input_mb_per_s": round(size / 1e6 / conv_s, 1),
        "rows_written": rep["rows_written"], "dropped": rep["dropped"], "output_bytes": out_bytes,
        "peak_rss_mib": round(peak_kib / 1024, 1), "under_4gb": peak_kib < 4 * 1024 * 1024,
        "command": " ".join(cmd[1:]),
    }
    line = json.dumps(res)
    print(line)
    (a.dir / "result.json").write_text(line + "\n")
    if not a.keep:
        raw.unlink()
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
