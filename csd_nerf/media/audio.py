"""A video's audio track, carried from the input file to the edited MP4 (the edit changes only the pictures).

The track is copied as it is when MP4 holds its codec, else re-encoded to AAC. If neither works the edited
video is kept without sound and the caller gets a one-line notice saying so: sound is never dropped silently.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from csd_nerf.errors import first_line

__all__ = ["AudioTrack", "find_audio", "add_audio"]

MP4_AUDIO = frozenset({"aac", "mp3", "opus", "flac", "alac", "ac3", "eac3"})
"""Codecs copied into MP4 as they are (others, e.g. PCM or Vorbis, are re-encoded: MP4 players lack them)."""


@dataclass(frozen=True)
class AudioTrack:
    """The first audio stream of a video file, and when its video starts (the edit's time 0)."""

    source: Path
    index: int
    """The stream's index in ``source``."""
    codec: str
    video_start: float = 0.0
    """Seconds of the source's timeline at which its first video frame is shown."""


def find_audio(container, source: Path, video_start: float) -> AudioTrack | None:
    """The first audio stream of an open PyAV ``container`` (``None`` when it has none)."""
    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    return AudioTrack(Path(source), stream.index, stream.codec_context.name, video_start)


def _copy(inp, out, track: AudioTrack) -> Callable[[], None]:
    """Add a copy of the track's stream to ``out``; returns what muxes its packets."""
    source = inp.streams[track.index]
    target = out.add_stream_from_template(source)
    shift = round(track.video_start / source.time_base) if source.time_base else 0

    def mux() -> None:
        for packet in inp.demux(source):
            if packet.dts is None or packet.pts is None or (shift > 0 and packet.pts < shift):
                continue  # the flush packet, and sound from before a late first frame (an encoder's
                # priming packet, at a negative time, stays: it is how the first samples play right)
            packet.pts, packet.dts = packet.pts - shift, packet.dts - shift
            packet.stream = target
            out.mux(packet)

    return mux


def _reencode(inp, out, track: AudioTrack) -> Callable[[], None]:
    """Add an AAC stream to ``out``; returns what encodes the track into it."""
    import av

    source = inp.streams[track.index]
    layout = {1: "mono", 2: "stereo"}.get(source.channels, source.layout.name)
    target = out.add_stream("aac", rate=source.rate, layout=layout)
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=source.rate)

    def mux() -> None:
        for frame in inp.decode(source):
            for part in resampler.resample(frame):
                part.pts = None  # the encoder counts samples from 0: the first frame's time
                for packet in target.encode(part):
                    out.mux(packet)
        for packet in target.encode():
            out.mux(packet)

    return mux


def add_audio(video: Path, track: AudioTrack) -> str | None:
    """Mux ``track`` into the MP4 ``video`` (rewritten in place, pictures copied); a notice if it was dropped."""
    import av

    video = Path(video)
    merged = video.with_name(f".{video.stem}.audio{video.suffix}")
    how = "copied" if track.codec in MP4_AUDIO else "re-encoded"
    try:
        with av.open(str(video)) as pictures, av.open(str(track.source)) as inp, av.open(str(merged), "w") as out:
            source = pictures.streams.video[0]
            target = out.add_stream_from_template(source)
            # Every stream exists before the first packet: the muxer writes the header then.
            mux_sound = (_copy if how == "copied" else _reencode)(inp, out, track)
            for packet in pictures.demux(source):
                if packet.dts is not None:
                    packet.stream = target
                    out.mux(packet)
            mux_sound()
        os.replace(merged, video)
    except (av.FFmpegError, OSError, ValueError) as exc:
        merged.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # a full disk is the caller's error to report, not a reason to drop the sound
        return (
            f"the audio track ({track.codec}) of {track.source.name} could not be kept ({first_line(exc)}): "
            "the edited video has no sound"
        )
    return None
