"""The documented command that generates the demo dataset; the renderer itself lives in `scenes.street`.

    python -m infer.datasets.demo --root data/demo --train 200 --val 50 --size 128x256 --seed 0

Nothing in `infer` imports this module: it only keeps the command (and ``from infer.datasets.demo import
generate_demo``) working where the generator used to live.
"""

from scenes.street import GENERATOR_VERSION, generate_demo, main, render_scene, write_demo_video

__all__ = ["GENERATOR_VERSION", "generate_demo", "main", "render_scene", "write_demo_video"]

if __name__ == "__main__":
    main()
