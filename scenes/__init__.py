"""Generated demo data: procedurally rendered street scenes in the Cityscapes layout (`segkd.scenes.street`).

It writes datasets and videos for demos and tests; a deployment never imports it (the ``demo`` dataset reader
in `segkd.infer.datasets.cityscapes` only reads what it wrote).

    segkd demo-data --root data/demo --train 200 --val 50 --size 128x256 --seed 0
"""

from segkd.scenes.street import GENERATOR_VERSION, generate_demo, render_scene, write_demo_video

__all__ = ["GENERATOR_VERSION", "generate_demo", "render_scene", "write_demo_video"]
