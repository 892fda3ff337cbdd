"""Export for teaching: a real ultrasound clip, annotations burned in, patient details masked."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import json
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from teleconsult.client.media import MediaClient
from teleconsult.session.roles import Role

from .conftest import Server
from .media_util import PacketTrack, ToneTrack, tone_level
from .test_media_process import TELECONSULT

HEADER = (0, 0, 640, 100)  # where US1_UNCR.dcm burns in the hospital and patient details


def ultrasound_frames(count: int) -> list[bytes]:
    """VP8 frames of a real ultrasound image (pydicom-data's US1_UNCR.dcm), drifting slowly."""
    import data_store  # type: ignore[import-untyped]
    import pydicom
    from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload

    path = Path(data_store.__file__).parent / "data" / "US1_UNCR.dcm"
    rgb = pydicom.dcmread(path).pixel_array
    encoder = Vp8Encoder()
    encoder.target_bitrate = 1_500_000
    out = []
    for n in range(count):
        img = np.roll(rgb, n % 8, axis=0)[..., ::-1].copy()
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = n * 3000, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=(n % 15 == 0))
        out.append(b"".join(vp8_depayload(p) for p in payloads))
    return out


async def test_export_burns_in_annotations_and_masks_the_header(
    server: Server, tmp_path: Path
) -> None:
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    op = await server.join(role=Role.OPERATOR, identity="op")
    media = MediaClient(op)
    try:
        stream = await media.publish(
            [
                (PacketTrack("video", ultrasound_frames(45), 30, 90000), "probe", "Lymph node"),
                (ToneTrack(), "microphone", "Sonographer"),
            ]
        )
        feed = f"{stream.id}.0"
        await mod.send({"type": "record", "action": "start"})
        await op.wait_for("consent_requested")
        await op.send({"type": "consent", "confirmed": True})
        started = await mod.wait_for("recording", where=lambda e: e["active"] is True)
        await asyncio.sleep(1.5)
        await op.request(
            {
                "type": "annotate",
                "op": "arrow",
                "id": "node",
                "feed": feed,
                "points": [[0.30, 0.70], [0.55, 0.45]],
                "style": {"color": "#00ff00", "width": 5},
            }
        )
        await asyncio.sleep(2.0)
        await mod.send({"type": "record", "action": "stop"})
        await mod.wait_for("recording", where=lambda e: e["active"] is False)
    finally:
        await media.close()
    folder = next((server.hub.settings.data_dir / "recordings" / "r1").iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    (track,) = [t for t in manifest["tracks"] if t["kind"] == "video"]
    drawn_at = next(
        json.loads(x)["t"]
        for x in (folder / "channel.jsonl").read_text().splitlines()
        if '"node"' in x
    )

    out = tmp_path / "teaching.mp4"
    done = await asyncio.to_thread(
        subprocess.run,
        [
            TELECONSULT,
            "export",
            started["session_id"],
            "--out",
            str(out),
            "--mask",
            ",".join(map(str, HEADER)),
            "--data-dir",
            str(server.hub.settings.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr  # the progress bar ran to the end
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.width, s.codec_context.height) == (
            "h264",
            640,
            480,
        )
        frames = [(f.time, f.to_ndarray(format="bgr24")) for f in c.decode(video=0)]
    assert len(frames) >= 0.9 * track["frames"]
    with av.open(str(out)) as c:  # the voice is mixed in, in step with the picture
        assert c.streams.audio[0].codec_context.name == "aac"
        sound = list(c.decode(audio=0))
    assert tone_level(sound[len(sound) // 4 :]) > 1000
    assert sum(f.samples for f in sound) / 48000 == pytest.approx(frames[-1][0], abs=0.3)
    x0, y0 = int(0.425 * 640), int(0.575 * 480)  # the middle of the arrow
    arrow = (slice(y0 - 6, y0 + 7), slice(x0 - 6, x0 + 7))

    def green(img: np.ndarray) -> bool:
        b, g, r = (img[arrow][..., i].astype(int) for i in range(3))
        return bool(((g > 200) & (r < 80) & (b < 80)).any())

    before = [img for t, img in frames if track["start"] + t < drawn_at - 0.2]
    after = [img for t, img in frames if track["start"] + t > drawn_at + 0.2]
    assert before and after
    assert not any(green(img) for img in before)
    assert all(green(img) for img in after)
    for _, img in frames:  # the patient details never show
        x, y, w, h = HEADER
        assert img[y : y + h, x : x + w].mean() < 3
    bad = await asyncio.to_thread(
        subprocess.run,
        [
            TELECONSULT,
            "export",
            "no-such-session",
            "--out",
            str(out),
            "--data-dir",
            str(server.hub.settings.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "no recorded session" in bad.stderr


def test_export_takes_frames_1_ms_apart_a_new_source_and_a_new_size(tmp_path: Path) -> None:
    """What a browser's recording holds: each of these stopped an export before."""
    from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload

    from teleconsult.recording.export import export
    from teleconsult.recording.frames import Frame
    from teleconsult.recording.track_file import TrackFile

    def vp8(encoder: Vp8Encoder, img: np.ndarray, n: int, key: bool) -> bytes:
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = n * 3000, fractions.Fraction(1, 90000)
        return b"".join(vp8_depayload(p) for p in encoder.encode(frame, force_keyframe=key)[0])

    big, small = Vp8Encoder(), Vp8Encoder()
    tf = TrackFile(tmp_path / "01-probe-video.webm", "VP8", 90000)
    img = np.full((480, 640, 3), 90, np.uint8)
    ts, at = 1000, 0.0
    for n in range(30):
        tf.write(Frame(vp8(big, img, n, n == 0), ts, n == 0), at)
        # Every tenth frame is followed 1 ms later by another (a browser's duplicate).
        ts, at = ts + (90 if n % 10 == 3 else 3000), at + (0.001 if n % 10 == 3 else 1 / 30)
    for n in range(30):  # a new source at half the size, its clock elsewhere
        data = vp8(small, np.full((240, 320, 3), 90, np.uint8), n, n == 0)
        tf.write(Frame(data, 7_000_000 + n * 3000, n == 0), at + 0.2 + n / 30, restart=n == 0)
    tf.close()
    manifest = {
        "tracks": [
            {
                "file": tf.path.name,
                "feed": "s-1.0",
                "kind": "video",
                "source": "probe",
                "start": 0.5,
                "duration": tf.duration,
                "frames": tf.frames,
                "width": tf.width,
                "height": tf.height,
                "sizes": tf.sizes,
            }
        ],
        "channel_log": "channel.jsonl",
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out.mp4"
    result = export(tmp_path, out, ["0,0,1,0.25"])
    assert result["frames"] == 60 and result["size"] == [640, 480]
    with av.open(str(out)) as c:
        frames = [(float(f.time or 0), f.to_ndarray(format="bgr24")) for f in c.decode(video=0)]
    times = [t for t, _ in frames]
    assert len(frames) == 60 and all(b > a for a, b in itertools.pairwise(times))
    assert {img.shape for _, img in frames} == {(480, 640, 3)}
    for _, picture in frames:  # the band is black at both sizes; the rest is the picture
        assert picture[:120].mean() < 3 and picture[130:].mean() > 60


def test_a_picture_of_another_shape_is_fitted_and_masked_in_its_own_place() -> None:
    from teleconsult.recording.export import Mask, _burned

    wide = av.VideoFrame.from_ndarray(np.full((180, 320, 3), 200, np.uint8), format="bgr24")
    img = _burned(wide, ([], []), [Mask.parse("0,0,1,0.25")], (640, 480))
    assert img.shape == (480, 640, 3)
    # 16:9 into 4:3: bars above and below, the picture between rows 60 and 420.
    assert img[:58].max() == 0 and img[422:].max() == 0
    # The mask covers the top quarter of the picture itself (90 rows), not of the frame.
    assert img[62:148].max() == 0 and img[155:415].min() > 150
