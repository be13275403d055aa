"""`hyvideo serve` driven by the real `openai` SDK (client.videos): create_and_poll with our
fields in extra_body, download_content equal byte for byte to `hyvideo generate`'s MP4 with the
same settings and seed, list, delete, a bad field raised as the SDK's BadRequestError naming
the param, and a step cache (fbcache) in extra_body recorded in the video object.

Usage: python test_videos.py --bin-dir target/debug --model tests/fixtures/tiny
(run.sh beside this file sets up the venv and runs it).
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile
import warnings

import openai

# The SDK marks its videos resource deprecated for OpenAI's own service; the wire format is what
# this server speaks.
warnings.filterwarnings("ignore", category=DeprecationWarning)

PROMPT = "A cat walks on the grass, realistic style."


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", type=pathlib.Path, required=True)
    ap.add_argument("--model", type=pathlib.Path, required=True)
    args = ap.parse_args()
    hyvideo = args.bin_dir / "hyvideo"
    export = args.bin_dir / "hyvideo-export"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        bundle = tmp / "bundle"
        subprocess.run([export, "onnx", "--model", args.model, "--out", bundle], check=True,
                       stdout=subprocess.DEVNULL)
        server = subprocess.Popen(
            [hyvideo, "serve", "--bundle", bundle, "--data-dir", tmp / "data",
             "--listen", "127.0.0.1:0", "--threads", "2"],
            stdout=subprocess.PIPE, text=True)
        try:
            line = server.stdout.readline()
            assert line.startswith("listening on http://"), line
            url = line.split("listening on ", 1)[1].strip()
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

            video = client.videos.create_and_poll(
                model="sora-2", prompt=PROMPT, size="48x32", seconds="4",
                extra_body={"num_frames": 9, "num_inference_steps": 4, "seed": 42,
                            "guidance_scale": 6.0, "flow_shift": 7.0},
                poll_interval_ms=200)
            assert video.status == "completed", video
            assert video.progress == 100, video
            assert video.size == "48x32", video
            content = client.videos.download_content(video.id).read()

            want = tmp / "generate.mp4"
            subprocess.run(
                [hyvideo, "generate", "--bundle", bundle, "--prompt", PROMPT,
                 "--video-size", "32", "48", "--video-length", "9", "--infer-steps", "4",
                 "--seed", "42", "--embedded-cfg-scale", "6.0", "--flow-shift", "7.0",
                 "--threads", "2", "--save-path", want],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert content == want.read_bytes(), "served MP4 differs from hyvideo generate's"

            thumb = client.videos.download_content(video.id, variant="thumbnail").read()
            assert thumb[:8] == b"\x89PNG\r\n\x1a\n"

            ids = [v.id for v in client.videos.list(limit=10).data]
            assert ids == [video.id], ids

            try:
                client.videos.create(prompt=PROMPT, extra_body={"colour": "red"})
                raise AssertionError("an unknown field was accepted")
            except openai.BadRequestError as e:
                assert e.body["param"] == "colour", e.body

            # Step caching through extra_body (sent as multipart text, like every field).
            cached = client.videos.create_and_poll(
                prompt=PROMPT, size="48x32",
                extra_body={"num_frames": 9, "num_inference_steps": 6, "seed": 42,
                            "step_cache": "fbcache", "step_cache_threshold": 0.5,
                            "step_cache_start": 1, "step_cache_end": 5},
                poll_interval_ms=200)
            assert cached.status == "completed", cached
            record = (cached.model_extra or {}).get("step_cache")
            assert record["method"] == "fbcache" and record["threshold"] == 0.5, record
            assert (record["start"], record["end"]) == (1, 5), record
            assert {0, 5} <= set(record["computed_steps"]), record
            try:
                client.videos.create(prompt=PROMPT, extra_body={"step_cache": "magic"})
                raise AssertionError("an unknown step cache was accepted")
            except openai.BadRequestError as e:
                assert e.body["param"] == "step_cache", e.body
            assert client.videos.delete(cached.id).deleted

            deleted = client.videos.delete(video.id)
            assert deleted.deleted and deleted.id == video.id
            try:
                client.videos.retrieve(video.id)
                raise AssertionError("a deleted video is still there")
            except openai.NotFoundError:
                pass
        finally:
            server.terminate()
            server.wait(timeout=60)
    print("openai SDK against hyvideo serve: ok (create_and_poll, download_content == generate, "
          "thumbnail, list, bad field, step cache, delete)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
