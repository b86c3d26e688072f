"""Generated demo data: procedurally rendered street scenes in the Cityscapes layout (`scenes.street`).

It writes datasets and videos for demos and tests; a deployment never imports it (the ``demo`` dataset reader
in `infer.datasets.cityscapes` only reads what it wrote).

    python -m infer.datasets.demo --root data/demo --train 200 --val 50 --size 128x256 --seed 0
"""

from scenes.street import GENERATOR_VERSION, generate_demo, render_scene, write_demo_video

__all__ = ["GENERATOR_VERSION", "generate_demo", "render_scene", "write_demo_video"]
