"""Write the example inputs the README uses: examples/scene.png and examples/clip.wav.

    .venv/bin/python examples/make_examples.py

scene.png is SynthPOPE test scene 15 (a red circle on a plain background, 64x64); clip.wav is
SynthAudio test clip 6 (a high rising chirp over background noise, 1 s at 16 kHz, 16-bit).
Both are the benchmarks' own deterministic items, so running this again rewrites the same
pictures and sounds.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from smoothguard.core.audio import write_wav
from smoothguard.synthetic.synthaudio import generate_split as audio_split
from smoothguard.synthetic.synthpope import generate_split as image_split

HERE = Path(__file__).resolve().parent
SCENE_INDEX = 15  # test split: [("red", "circle")]
CLIP_INDEX = 6  # test split: [('high', 'rising chirp')]


def main() -> None:
    scene = image_split("test", 1, seed_offset=SCENE_INDEX)[0]
    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, format="PNG", optimize=True)
    (HERE / "scene.png").write_bytes(buffer.getvalue())
    clip = audio_split("test", 1, seed_offset=CLIP_INDEX)[0]
    (HERE / "clip.wav").write_bytes(write_wav(clip.waveform))
    print(f"scene.png: SynthPOPE test scene {scene.seed}, objects {scene.objects}")
    print(f"clip.wav: SynthAudio test clip {clip.seed}, events {clip.events}")


if __name__ == "__main__":
    main()
