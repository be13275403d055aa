"""`hyvideo serve` driven by the real `openai` SDK (client.videos): create_and_poll with our
fields in extra_body, download_content equal byte for byte to `hyvideo generate`'s MP4 with the
same settings and seed, list, delete, a bad field raised as the SDK's BadRequestError naming
the param, and a step cache (fbcache) in extra_body recorded in the video object. With
--i2v-model, image-to-video too: `input_reference=open(png, "rb")` (a multipart file upload) and
a data URL in extra_body both give `hyvideo generate --image`'s MP4; a text file, a truncated
PNG, no image, an http URL and an image sent to the text-to-video server are BadRequestErrors
naming input_reference. (This SDK version refuses `input_reference={"image_url": ...}` itself:
its create() takes every input_reference for a file to upload.)

Usage: python test_videos.py --bin-dir target/debug --model tests/fixtures/tiny
           [--i2v-model tests/fixtures/tiny_i2v --image tests/fixtures/goldens/i2v_images/resized.png]
(run.sh beside this file sets up the venv and runs it).
"""

import argparse
import base64
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
    ap.add_argument("--i2v-model", type=pathlib.Path)
    ap.add_argument("--image", type=pathlib.Path)
    args = ap.parse_args()
    hyvideo = args.bin_dir / "hyvideo"
    export = args.bin_dir / "hyvideo-export"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        bundle = tmp / "bundle"
        subprocess.run([export, "onnx", "--model", args.model, "--out", bundle], check=True,
                       stdout=subprocess.DEVNULL)
        server, client = start(hyvideo, bundle, tmp / "data")
        try:

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

            if args.image:
                # A text-to-video server refuses an image.
                bad_request(lambda: client.videos.create(
                    prompt=PROMPT, size="48x32", input_reference=open(args.image, "rb")),
                    "text-to-video")
        finally:
            server.terminate()
            server.wait(timeout=60)
        done = ["create_and_poll", "download_content == generate", "thumbnail", "list",
                "bad field", "step cache", "delete"]
        if args.i2v_model:
            image_to_video(args, tmp, hyvideo, export)
            done.append("image-to-video (upload and data URL == generate --image, refusals)")
    print(f"openai SDK against hyvideo serve: ok ({', '.join(done)})")
    return 0


def start(hyvideo, bundle, data):
    """`hyvideo serve` on `bundle` (port chosen by the OS) and a client for it."""
    server = subprocess.Popen(
        [hyvideo, "serve", "--bundle", bundle, "--data-dir", data,
         "--listen", "127.0.0.1:0", "--threads", "2"],
        stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    if not line.startswith("listening on http://"):
        server.kill()
        raise AssertionError(f"no `listening on` line: {line!r}")
    url = line.split("listening on ", 1)[1].strip()
    return server, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def bad_request(call, needle):
    """`call` raises the SDK's BadRequestError naming input_reference, its message with `needle`."""
    try:
        call()
    except openai.BadRequestError as e:
        assert e.body["param"] == "input_reference", e.body
        assert needle in e.body["message"], e.body
        return
    raise AssertionError(f"accepted; expected a 400 naming input_reference ({needle})")


def image_to_video(args, tmp, hyvideo, export):
    """The image-to-video server: the image as the SDK uploads it, and as OpenAI's image_url."""
    bundle = tmp / "i2v_bundle"
    subprocess.run([export, "onnx", "--model", args.i2v_model, "--out", bundle], check=True,
                   stdout=subprocess.DEVNULL)
    want = tmp / "generate_i2v.mp4"
    subprocess.run(
        [hyvideo, "generate", "--bundle", bundle, "--image", args.image, "--prompt", PROMPT,
         "--video-size", "32", "48", "--video-length", "9", "--infer-steps", "4",
         "--seed", "42", "--flow-shift", "7.0", "--threads", "2", "--save-path", want],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server, client = start(hyvideo, bundle, tmp / "i2v_data")
    extra = {"num_frames": 9, "num_inference_steps": 4, "seed": 42, "flow_shift": 7.0}
    try:
        with open(args.image, "rb") as f:
            video = client.videos.create_and_poll(
                prompt=PROMPT, size="48x32", input_reference=f, extra_body=extra,
                poll_interval_ms=200)
        assert video.status == "completed", video
        assert (video.model_extra or {}).get("guidance_scale") == 6.0, video
        uploaded = client.videos.download_content(video.id).read()
        assert uploaded == want.read_bytes(), "served MP4 differs from generate --image's"

        url = "data:image/png;base64," + base64.b64encode(args.image.read_bytes()).decode()
        by_url = client.videos.create_and_poll(
            prompt=PROMPT, size="48x32", extra_body={**extra, "input_reference": url},
            poll_interval_ms=200)
        assert by_url.status == "completed", by_url
        assert client.videos.download_content(by_url.id).read() == uploaded

        bad_request(lambda: client.videos.create(
            prompt=PROMPT, size="48x32", extra_body=extra,
            input_reference=("notes.txt", b"not an image", "text/plain")),
            "content type `text/plain`")
        bad_request(lambda: client.videos.create(
            prompt=PROMPT, size="48x32", extra_body=extra,
            input_reference=("cut.png", args.image.read_bytes()[:500], "image/png")),
            "truncated PNG")
        bad_request(lambda: client.videos.create(prompt=PROMPT, size="48x32", extra_body=extra),
                    "is required")
        bad_request(lambda: client.videos.create(
            prompt=PROMPT, size="48x32",
            extra_body={**extra, "input_reference": "https://example.com/cat.png"}),
            "fetches no URLs")
        ids = [v.id for v in client.videos.list(limit=10).data]
        assert sorted(ids) == sorted([video.id, by_url.id]), ids
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
