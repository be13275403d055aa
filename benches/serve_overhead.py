"""Benchmark: 10 sequential requests to one `hyvideo serve` vs 10 `hyvideo generate` runs with
the same settings, on the tiny fixture bundle (CPU). Reports the total wall time of each path,
the server's one-time load, and per request the time from create to the job being claimed
(`in_progress`) and to its first denoising step (progress > 0): what a request costs beyond
the generation itself. Standard library only (HTTP via urllib).

Usage: python3 benches/serve_overhead.py --bin-dir target/release --runs 10
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import tempfile
import time
import urllib.request

PROMPT = "A cat walks on the grass, realistic style."
SETTINGS = {"size": "48x32", "num_frames": 9, "num_inference_steps": 30, "seed": 42}


def call(url, method="GET", body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", type=pathlib.Path, default=pathlib.Path("target/release"))
    ap.add_argument("--model", type=pathlib.Path, default=pathlib.Path("tests/fixtures/tiny"))
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    hyvideo, export = args.bin_dir / "hyvideo", args.bin_dir / "hyvideo-export"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        bundle = tmp / "bundle"
        subprocess.run([export, "onnx", "--model", args.model, "--out", bundle], check=True,
                       stdout=subprocess.DEVNULL)

        t0 = time.perf_counter()
        for i in range(args.runs):
            subprocess.run(
                [hyvideo, "generate", "--bundle", bundle, "--prompt", PROMPT,
                 "--video-size", "32", "48", "--video-length", "9",
                 "--infer-steps", str(SETTINGS["num_inference_steps"]), "--seed", "42",
                 "--threads", "2", "--save-path", tmp / f"g{i}.mp4"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        generate_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        server = subprocess.Popen(
            [hyvideo, "serve", "--bundle", bundle, "--data-dir", tmp / "data",
             "--listen", "127.0.0.1:0", "--threads", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            url = server.stdout.readline().split("listening on ", 1)[1].strip()
            load_s = time.perf_counter() - t0
            claimed, first_step, per_request = [], [], []
            t_all = time.perf_counter()
            for _ in range(args.runs):
                t = time.perf_counter()
                job = call(f"{url}/v1/videos", "POST", {"prompt": PROMPT, **SETTINGS})
                seen_claim = seen_step = None
                while True:
                    v = call(f"{url}/v1/videos/{job['id']}")
                    now = time.perf_counter() - t
                    if seen_claim is None and v["status"] != "queued":
                        seen_claim = now
                    if seen_step is None and v["progress"] > 0:
                        seen_step = now
                    if v["status"] in ("completed", "failed"):
                        assert v["status"] == "completed", v
                        break
                    time.sleep(0.005)
                per_request.append(time.perf_counter() - t)
                claimed.append(seen_claim if seen_claim is not None else per_request[-1])
                first_step.append(seen_step if seen_step is not None else per_request[-1])
            serve_s = time.perf_counter() - t_all
        finally:
            server.terminate()
            server.wait(timeout=60)
    n = args.runs
    print(f"{n} x hyvideo generate: {generate_s:.2f} s total, {generate_s / n:.3f} s each")
    print(f"hyvideo serve: load {load_s:.2f} s once; {n} requests {serve_s:.2f} s total, "
          f"{serve_s / n:.3f} s each")
    print(f"per request: create -> claimed median {statistics.median(claimed) * 1000:.0f} ms, "
          f"create -> first denoising step median {statistics.median(first_step) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
