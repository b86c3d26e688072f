"""Procedurally generated street scenes in the Cityscapes layout, for demos and tests without a download.

    segkd demo-data --root data/demo --train 200 --val 50 --size 128x256 --seed 0

Each frame is a perspective street seen from a car: road with markings and crossings, curbs, sidewalks, grass
verges, facades with windows, side streets, walls, fences, trees, street lights, signs, traffic lights, parked
and moving cars, trucks, buses, pedestrians and riders on bicycles and motorcycles, drawn far to near so that
near things occlude far ones. Surfaces are textured per material, not per class, and the classes that look
alike (road/sidewalk, vegetation/terrain, building/wall, person/rider, car/truck/bus) differ in shape and
position, so a segmentation model needs context and capacity. Light varies (sun, overcast, dusk; cast shadows,
fog, exposure, white balance, blur, sensor noise). Labels are Cityscapes labelIds, including ignored ones
(ego vehicle, rectification border, parking, static objects); ``build_dataset("demo", root, split)`` reads
them.

Frame ``i`` of a split depends only on (seed, split, i): the same seed gives identical files, and a larger
count extends a split without changing its first frames.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from segkd.infer.cliargs import hw_arg
from segkd.infer.datasets.cityscapes import DEMO_CLASS_SETS, LABEL_ID
from segkd.infer.datasets.reading import write_png
from segkd.infer.fileio import atomic_write_text
from segkd.infer.video.output import VideoSink

__all__ = ["CLASS_SETS", "GENERATOR_VERSION", "generate_demo", "main", "render_scene", "write_demo_video"]

GENERATOR_VERSION = 1
_CITY = "demo"
_MANIFEST = "demo.json"
CLASS_SETS = DEMO_CLASS_SETS  # class set name -> the reader's label_type
_SHIFT = 4  # fixed-point bits of the polygon coordinates: sub-pixel accuracy for thin, far objects
_ONE = 1 << _SHIFT

L = LABEL_ID  # Cityscapes labelIds by name
Point = tuple[float, float, float]
Color = tuple[int, int, int]  # RGB


class M:
    """Material ids: texture depends on the material, which several classes share."""

    SKY, ASPHALT, PAVING, PLASTER, FOLIAGE, GRASS, PAINT, CLOTH, GLASS, METAL, SKIN = range(11)


# (low-frequency, high-frequency) relative brightness modulation per material, indexed by M.
_TEXTURE = np.array(
    [(0.02, 0.004), (0.10, 0.07), (0.07, 0.06), (0.07, 0.03), (0.22, 0.22), (0.14, 0.13), (0.04, 0.01),
     (0.08, 0.03), (0.15, 0.02), (0.05, 0.02), (0.03, 0.01)],
    np.float32,
)  # fmt: skip

_FACADES = [(205, 192, 170), (172, 162, 150), (150, 82, 62), (222, 216, 205), (122, 122, 128),
            (182, 142, 104), (98, 94, 90), (190, 172, 140), (160, 176, 186), (140, 120, 110)]  # fmt: skip
_PAINTS = [(232, 232, 232), (28, 28, 30), (172, 174, 178), (82, 84, 88), (150, 22, 24), (30, 52, 122),
           (40, 82, 52), (200, 180, 140), (225, 180, 20), (110, 30, 40)]  # fmt: skip
_CLOTHES = [(30, 30, 35), (60, 60, 70), (40, 50, 90), (150, 30, 30), (220, 220, 215), (90, 70, 50),
            (40, 90, 60), (180, 150, 110), (120, 40, 110), (200, 120, 40)]  # fmt: skip
_SKIN = [(235, 200, 170), (210, 165, 130), (160, 110, 80), (110, 75, 55)]
_HAIR = [(30, 25, 20), (80, 60, 40), (160, 130, 80)]
_GREENS = [(60, 95, 35), (80, 120, 45), (45, 75, 40), (100, 125, 50), (125, 115, 45)]
_GRASS = [(105, 140, 60), (125, 150, 75), (140, 140, 85), (90, 120, 55)]
_ASPHALT = [(80, 80, 86), (100, 98, 104), (62, 62, 66), (118, 114, 120)]
_PAVING = [(128, 126, 124), (150, 146, 140), (152, 118, 108), (104, 104, 110)]
_METALS = [(90, 92, 95), (150, 150, 150), (40, 60, 45), (30, 30, 32)]
_GLASS = [(50, 60, 75), (80, 95, 115), (35, 38, 45), (120, 140, 160)]
_SIGNS = [((200, 30, 30), (240, 240, 240)), ((30, 70, 170), (240, 240, 240)), ((240, 200, 20), (30, 30, 30)),
          ((30, 120, 60), (240, 240, 240)), ((240, 240, 240), (200, 30, 30))]  # fmt: skip
_LIT_WINDOW = (255, 220, 140)
_TYRE = (25, 25, 27)


# ------------------------------------------------------------------------------------------------ geometry


def _front(x0: float, x1: float, y0: float, y1: float, z: float) -> list[Point]:
    """Rectangle facing the camera (plane Z = z)."""
    return [(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)]


def _side(x: float, y0: float, y1: float, z0: float, z1: float) -> list[Point]:
    """Rectangle along the street (plane X = x)."""
    return [(x, y0, z0), (x, y1, z0), (x, y1, z1), (x, y0, z1)]


def _flat(x0: float, x1: float, y: float, z0: float, z1: float) -> list[Point]:
    """Horizontal rectangle (plane Y = y)."""
    return [(x0, y, z0), (x1, y, z0), (x1, y, z1), (x0, y, z1)]


def _bgr(rgb: Sequence[float]) -> tuple[float, float, float]:
    return (float(rgb[2]), float(rgb[1]), float(rgb[0]))


def _scale(rgb: Color, k: float) -> Color:
    return (min(int(rgb[0] * k), 255), min(int(rgb[1] * k), 255), min(int(rgb[2] * k), 255))


def _jitter(rng: np.random.Generator, rgb: Sequence[float], sigma: float = 12.0) -> Color:
    c = np.clip(np.asarray(rgb, np.float32) + rng.normal(0, sigma, 3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def _pick(rng: np.random.Generator, items: list, sigma: float = 0.0) -> Any:
    """A random element of ``items``; colours get a jitter of ``sigma``."""
    item = items[int(rng.integers(len(items)))]
    return _jitter(rng, item, sigma) if sigma else item


class _Canvas:
    """A pinhole camera over a flat ground plus the image, label, material, depth and shade buffers.

    World: X to the right, Y up from the road surface, Z forward from the camera (metres).
    """

    def __init__(self, size: tuple[int, int], rng: np.random.Generator) -> None:
        h, w = size
        self.h, self.w = h, w
        self.horizon = h * rng.uniform(0.36, 0.5)
        self.cx = w * rng.uniform(0.4, 0.6)
        self.f = w * rng.uniform(0.8, 1.2)  # focal length in pixels
        self.cam_h = rng.uniform(1.2, 1.7)
        self.img = np.zeros((h, w, 3), np.float32)  # BGR, 0..255
        self.lab = np.full((h, w), L["sky"], np.uint8)
        self.mat = np.full((h, w), M.SKY, np.uint8)
        self.depth = np.full((h, w), np.inf, np.float32)
        self.shade = np.ones((h, w), np.float32)

    def project(self, pts: Sequence[Sequence[float]]) -> np.ndarray:
        """World points -> (N, 2) int32 fixed-point pixel coordinates.

        Plain Python arithmetic: the polygons have a handful of points, where numpy's per-call cost dominates.
        """
        f, cx, cy, ch, lim = self.f * _ONE, self.cx * _ONE, self.horizon * _ONE, self.cam_h, 2**26
        out = []
        for x, y, z in pts:
            z = max(z, 0.05)
            u, v = round(cx + f * x / z), round(cy + f * (ch - y) / z)
            out.append((min(max(u, -lim), lim), min(max(v, -lim), lim)))
        return np.array(out, np.int32)  # (N, 2)

    def px(self, metres: float, z: float) -> float:
        """Size in pixels of ``metres`` seen face-on at depth ``z``."""
        return self.f * metres / max(z, 0.05)

    def poly(self, pts: Sequence[Point], color: Color, label: int | None, material: int) -> None:
        """Fill the convex polygon of world points ``pts``; ``label=None`` paints the image only."""
        p = self.project(pts)
        cv2.fillConvexPoly(self.img, p, _bgr(color), cv2.LINE_8, _SHIFT)
        cv2.fillConvexPoly(self.mat, p, int(material), cv2.LINE_8, _SHIFT)
        if label is not None:
            cv2.fillConvexPoly(self.lab, p, int(label), cv2.LINE_8, _SHIFT)
            cv2.fillConvexPoly(self.depth, p, sum(q[2] for q in pts) / len(pts), cv2.LINE_8, _SHIFT)

    def ellipse(self, c: Point, rx: float, ry: float, color: Color, label: int | None, material: int) -> None:
        """Fill an ellipse facing the camera, centred at world point ``c``, radii in metres."""
        center = tuple(int(v) for v in self.project([c])[0])
        axes = (int(self.px(rx, c[2]) * _ONE), int(self.px(ry, c[2]) * _ONE))
        values = [(self.img, _bgr(color)), (self.mat, int(material))]
        if label is not None:
            values += [(self.lab, int(label)), (self.depth, float(c[2]))]
        for buf, v in values:
            cv2.ellipse(buf, center, axes, 0, 0, 360, v, -1, cv2.LINE_8, _SHIFT)

    def stroke(
        self, pts: Sequence[Point], width: float, color: Color, label: int, circle: float = 0.0
    ) -> None:
        """Line from pts[0] to pts[1] (or, with ``circle`` > 0, a ring of that radius around pts[0])."""
        p = self.project(pts)
        t = max(1, round(self.px(width, pts[0][2])))
        for buf, v in ((self.img, _bgr(color)), (self.lab, int(label)), (self.mat, M.METAL)):
            if circle:
                r = int(self.px(circle, pts[0][2]) * _ONE)
                cv2.circle(buf, tuple(int(q) for q in p[0]), r, v, t, cv2.LINE_8, _SHIFT)
            else:
                cv2.line(
                    buf, tuple(int(q) for q in p[0]), tuple(int(q) for q in p[1]), v, t, cv2.LINE_8, _SHIFT
                )

    def shadow(self, pts: Sequence[Point], factor: float) -> None:
        """Darken whatever ends up inside the polygon ``pts``."""
        cv2.fillConvexPoly(self.shade, self.project(pts), factor, cv2.LINE_8, _SHIFT)


@dataclass
class _Street:
    """Cross-section of the street: road edges, sidewalks, grass verges, and where the buildings stand."""

    edge: dict[int, float]  # side (-1 left, +1 right) -> |X| of the road edge
    walk: dict[int, float]  # sidewalk width
    verge: dict[int, float]  # grass strip width (0: none)
    verge_first: dict[int, bool]  # grass between road and sidewalk instead of between sidewalk and buildings
    z_end: float  # the street ends at a row of buildings at this depth
    curb: float
    crossing: tuple[float, float] | None = None  # (depth, length) of a zebra crossing

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Street:
        sides = (-1, 1)
        return cls(
            edge={s: float(rng.uniform(3.0, 8.0)) for s in sides},
            walk={s: float(rng.uniform(2.0, 6.0)) for s in sides},
            verge={s: float(rng.uniform(0.8, 3.5)) if rng.random() < 0.35 else 0.0 for s in sides},
            verge_first={s: bool(rng.random() < 0.5) for s in sides},
            z_end=float(rng.uniform(45, 160)),
            curb=float(rng.uniform(0.1, 0.2)),
        )

    def building_x(self, s: int) -> float:
        return self.edge[s] + self.walk[s] + self.verge[s]

    def walk_range(self, s: int) -> tuple[float, float]:
        a = self.edge[s] + (self.verge[s] if self.verge_first[s] else 0.0)
        return a, a + self.walk[s]

    def verge_range(self, s: int) -> tuple[float, float]:
        a = self.edge[s] if self.verge_first[s] else self.edge[s] + self.walk[s]
        return a, a + self.verge[s]


@dataclass
class _Scene:
    """What the drawing functions share."""

    cv: _Canvas
    rng: np.random.Generator
    st: _Street
    lit: float  # probability that a window is lit
    gain: dict[int, float]  # facade brightness per side: one side in the sun, the other in the shade


def _zbands(z0: float, z1: float, n: int) -> list[float]:
    """``n + 1`` depths from z0 to z1, geometrically spaced (even in image rows)."""
    return [z0 * (z1 / z0) ** (k / n) for k in range(n + 1)]


def _ground_strip(
    sc: _Scene, s: int, a: float, b: float, z: tuple[float, float], y: float, **kw: object
) -> None:
    """Horizontal strip ``a <= |X| <= b`` on side ``s`` at height ``y`` from z[0] to z[1], in depth bands."""
    zs = _zbands(z[0], z[1], 6)
    for za, zb in zip(zs[:-1], zs[1:]):
        sc.cv.poly(_flat(s * a, s * b, y, za, zb), **kw)  # type: ignore[arg-type]


def _segments(rng: np.random.Generator, z_end: float) -> list[tuple[float, float, str]]:
    """Split one side of the street into (z0, z1, kind) stretches up to ``z_end``."""
    kinds = ["building", "street", "park", "wall", "fence"]
    probs = [0.64, 0.08, 0.1, 0.1, 0.08]
    segs, z = [], 0.5
    while z < z_end:
        kind = str(rng.choice(kinds, p=probs))
        length = float(rng.uniform(9, 14) if kind == "street" else rng.uniform(6, 28))
        segs.append((z, min(z + length, z_end), kind))
        z += length
    return segs


# ------------------------------------------------------------------------------------------- sky and ground


def _draw_sky(cv: _Canvas, rng: np.random.Generator, mood: str) -> Color:
    """Gradient sky with clouds; returns the RGB colour of the haze near the horizon."""
    tops = {"sun": (70, 125, 205), "overcast": (150, 155, 162), "dusk": (55, 65, 120)}
    lows = {"sun": (185, 205, 228), "overcast": (205, 206, 210), "dusk": (235, 150, 90)}
    top, low = _jitter(rng, tops[mood], 15), _jitter(rng, lows[mood], 12)
    rows = min(cv.h, int(cv.horizon) + 4)  # the ground covers everything below the horizon
    t = (np.arange(rows, dtype=np.float32) / max(cv.horizon, 1))[:, None, None]  # (rows, 1, 1)
    gradient = np.float32(_bgr(top)) * (1 - t) + np.float32(_bgr(low)) * t  # (rows, 1, 3)
    noise = rng.standard_normal((4, 8)).astype(np.float32)
    clouds = cv2.resize(noise, (cv.w, rows), interpolation=cv2.INTER_CUBIC)
    clouds = np.clip(clouds * rng.uniform(0.2, 0.8) + rng.uniform(-0.6, 0.3), 0, 1)[..., None]  # (rows, W, 1)
    white = np.float32(235 if mood != "dusk" else 170)
    cv.img[:rows] = gradient * (1 - clouds) + white * clouds
    cv.img[rows:] = _bgr(low)
    return low


def _draw_ground(sc: _Scene, segs: dict[int, list[tuple[float, float, str]]]) -> None:
    """Road, side streets, sidewalks, verges and the ground beyond the building line."""
    rng, st = sc.rng, sc.st
    asphalt, paving, grass = _pick(rng, _ASPHALT, 8), _pick(rng, _PAVING, 10), _pick(rng, _GRASS, 10)
    road = {"color": asphalt, "label": L["road"], "material": M.ASPHALT}
    walk = {"color": paving, "label": L["sidewalk"], "material": M.PAVING}
    lawn = {"color": grass, "label": L["terrain"], "material": M.GRASS}
    for s in (-1, 1):
        _ground_strip(sc, s, 0.0, st.edge[s], (0.5, st.z_end), 0.0, **road)
        xb = st.building_x(s)
        for z0, z1, kind in segs[s]:
            if kind == "street":  # a side street crosses the sidewalk
                _ground_strip(sc, s, st.edge[s] - 0.01, xb + 60, (z0, z1), 0.0, **road)
                continue
            _ground_strip(sc, s, xb, xb + 40, (z0, z1), st.curb, **(walk if kind == "building" else lawn))
            _ground_strip(sc, s, *st.walk_range(s), (z0, z1), st.curb, **walk)
            if st.verge[s]:
                _ground_strip(sc, s, *st.verge_range(s), (z0, z1), st.curb, **lawn)
            _draw_curb_and_tiles(sc, s, z0, z1, paving)
    _draw_markings(sc)
    if rng.random() < 0.3:  # a parking bay beside the road: labelled, but ignored in evaluation
        s, z0 = int(rng.choice([-1, 1])), float(rng.uniform(6, 30))
        bay = _jitter(rng, _scale(asphalt, 1.25), 6)
        z = (z0, z0 + float(rng.uniform(8, 25)))
        _ground_strip(
            sc, s, st.edge[s] - 2.3, st.edge[s], z, 0.0, color=bay, label=L["parking"], material=M.PAVING
        )


def _draw_curb_and_tiles(sc: _Scene, s: int, z0: float, z1: float, paving: Color) -> None:
    st, e = sc.st, sc.st.edge[s]
    curb = _jitter(sc.rng, _scale(paving, 1.2), 5)
    curb_label = L["terrain"] if st.verge[s] and st.verge_first[s] else L["sidewalk"]
    zs = _zbands(z0, z1, 4)
    for za, zb in zip(zs[:-1], zs[1:]):
        sc.cv.poly(_side(s * e, 0, st.curb, za, zb), curb, curb_label, M.PAVING)
    a, b = st.walk_range(s)
    joint = _jitter(sc.rng, _scale(paving, 0.75), 5)
    step = float(sc.rng.uniform(0.6, 1.5))
    for z in np.arange(z0 + step, min(z1, 40.0), step).tolist():  # tile joints, near ones only
        sc.cv.poly(_flat(s * a, s * b, st.curb, z, z + 0.04), joint, None, M.PAVING)


def _draw_markings(sc: _Scene) -> None:
    rng, st = sc.rng, sc.st
    paint = _pick(rng, [(225, 225, 220), (215, 215, 205), (230, 190, 50)], 8)
    width = st.edge[-1] + st.edge[1]
    lanes = max(1, round(width / rng.uniform(3.0, 3.6)))
    dash, gap = float(rng.uniform(2, 4)), float(rng.uniform(4, 9))
    for k in range(1, lanes):
        x = -st.edge[-1] + width * k / lanes
        for z in np.arange(rng.uniform(0.5, 5), st.z_end, dash + gap).tolist():
            sc.cv.poly(_flat(x - 0.07, x + 0.07, 0.0, z, z + dash), paint, L["road"], M.PAINT)
    if rng.random() < 0.3:  # zebra crossing
        z0, depth = float(rng.uniform(7, 35)), float(rng.uniform(2.5, 4.5))
        for x in np.arange(-st.edge[-1] + 0.3, st.edge[1] - 0.5, 1.0).tolist():
            sc.cv.poly(_flat(x, x + 0.5, 0.0, z0, z0 + depth), (235, 235, 230), L["road"], M.PAINT)
        st.crossing = (z0, depth)


# ------------------------------------------------------------------------------------- buildings and walls


def _facade(sc: _Scene, s: int, x: float, z0: float, z1: float, height: float) -> None:
    """Building: side wall in the plane |X| = x from z0 to z1, front face at z0, cornice and windows."""
    y0, gain = sc.st.curb, sc.gain[s]
    color = _pick(sc.rng, _FACADES, 10)
    top = y0 + height
    sc.cv.poly(_front(s * x, s * (x + 20), y0, top, z0), _scale(color, gain * 0.75), L["building"], M.PLASTER)
    sc.cv.poly(_side(s * x, y0, top, z0, z1), _scale(color, gain), L["building"], M.PLASTER)
    sc.cv.poly(_side(s * x, top - 0.4, top, z0, z1), _scale(color, gain * 0.8), None, M.PLASTER)
    _windows(sc, s, x, z0, z1, height)


def _windows(sc: _Scene, s: int, x: float, z0: float, z1: float, height: float) -> None:
    rng, y0 = sc.rng, sc.st.curb
    floor_h, col_w = float(rng.uniform(2.8, 3.6)), float(rng.uniform(2.2, 3.6))
    win_w, win_h = col_w * rng.uniform(0.4, 0.7), floor_h * rng.uniform(0.4, 0.65)
    glass = _pick(rng, _GLASS, 10)
    shop = rng.random() < 0.5  # large shop windows on the ground floor
    bottoms = np.arange(y0 + floor_h * (1.3 if shop else 1.0), y0 + height - floor_h * 0.8, floor_h).tolist()
    rows = [(y0 + 0.5, floor_h * 0.75)] * shop + [(yb, win_h) for yb in bottoms]
    for z in np.arange(z0 + 0.6, z1 - win_w, col_w).tolist():
        if sc.cv.f * x * win_w / (z * (z + win_w)) < 0.8:  # sub-pixel columns: the texture stands for them
            break
        for yb, hh in rows:
            c = _LIT_WINDOW if rng.random() < sc.lit else glass
            sc.cv.poly(_side(s * x, yb, yb + hh, z, z + win_w), c, None, M.GLASS)


def _backdrop(sc: _Scene) -> None:
    """Row of buildings and trees facing the camera where the street ends."""
    cv, rng, z = sc.cv, sc.rng, sc.st.z_end
    x = -z * cv.cx / cv.f - 5  # left image border at that depth
    while x < z * (cv.w - cv.cx) / cv.f + 5:
        width = float(rng.uniform(6, 22))
        if rng.random() < 0.2:
            _tree(sc, x + width / 2, z, 0.0, scale=float(rng.uniform(1.2, 2.0)))
        else:
            top = float(rng.uniform(5, 35))
            cv.poly(_front(x, x + width, 0, top, z), _pick(rng, _FACADES, 10), L["building"], M.PLASTER)
            glass = _jitter(rng, (70, 80, 95), 10)
            for wy in np.arange(2.0, top - 1.5, 3.2).tolist():
                for wx in np.arange(x + 0.8, x + width - 1.2, 2.6).tolist():
                    c = _LIT_WINDOW if rng.random() < sc.lit else glass
                    cv.poly(_front(wx, wx + 1.1, wy, wy + 1.5, z), c, None, M.GLASS)
        x += width


def _wall(sc: _Scene, s: int, x: float, z0: float, z1: float) -> None:
    """Free-standing wall along the street: building colours, no windows, low."""
    color = _scale(_pick(sc.rng, _FACADES, 10), sc.gain[s])
    y0 = sc.st.curb
    top = y0 + float(sc.rng.uniform(0.8, 2.6))
    sc.cv.poly(_side(s * x, y0, top, z0, z1), color, L["wall"], M.PLASTER)
    sc.cv.poly(_side(s * x, top - 0.12, top, z0, z1), _scale(color, 0.8), None, M.PLASTER)


def _fence(sc: _Scene, s: int, x: float, z0: float, z1: float) -> None:
    """See-through fence along the street: a mesh blended over what is behind it, rails and posts."""
    cv, y0 = sc.cv, sc.st.curb
    top = y0 + float(sc.rng.uniform(1.0, 2.2))
    metal = _pick(sc.rng, [(60, 62, 60), (140, 140, 135), (40, 70, 50), (170, 160, 150)], 8)
    mask = np.zeros((cv.h, cv.w), np.uint8)
    cv2.fillConvexPoly(mask, cv.project(_side(s * x, y0, top, z0, z1)), 1, cv2.LINE_8, _SHIFT)
    inside = mask.astype(bool)
    alpha = np.float32(sc.rng.uniform(0.35, 0.7))
    cv.img[inside] = cv.img[inside] * (1 - alpha) + np.float32(_bgr(metal)) * alpha
    cv.lab[inside], cv.mat[inside], cv.depth[inside] = L["fence"], M.METAL, (z0 + z1) / 2
    for yr in (top - 0.06, y0 + 0.15):
        cv.poly(_side(s * x, yr, yr + 0.06, z0, z1), metal, L["fence"], M.METAL)
    for z in np.arange(z0, z1, 2.5).tolist():
        cv.poly(_side(s * x, y0, top, z, z + 0.08), metal, L["fence"], M.METAL)


_BOUNDARIES = {"wall": _wall, "fence": _fence}  # what stands on the building line where there is no building


# -------------------------------------------------------------------------------------------- street items


def _tree(sc: _Scene, x: float, z: float, y0: float, scale: float = 1.0) -> None:
    rng = sc.rng
    trunk_h, trunk_w = float(rng.uniform(1.8, 3.5)) * scale, float(rng.uniform(0.18, 0.4)) * scale
    bark = _jitter(rng, (85, 70, 55), 12)
    sc.cv.poly(
        _front(x - trunk_w / 2, x + trunk_w / 2, y0, y0 + trunk_h + 0.5, z), bark, L["vegetation"], M.PLASTER
    )
    base = _pick(rng, _GREENS)
    r = float(rng.uniform(1.2, 3.0)) * scale
    for _ in range(int(rng.integers(4, 9))):
        cx, cy = x + rng.normal(0, r * 0.5), y0 + trunk_h + r * rng.uniform(0.5, 1.1) + rng.normal(0, r * 0.3)
        rad = r * rng.uniform(0.45, 0.9)
        leaves = _jitter(rng, base, 14)
        sc.cv.ellipse((cx, cy, z - 0.1), rad, rad * rng.uniform(0.7, 1.1), leaves, L["vegetation"], M.FOLIAGE)


def _hedge(sc: _Scene, s: int, x: float, z0: float, z1: float) -> None:
    y0 = sc.st.curb
    top = y0 + float(sc.rng.uniform(0.5, 1.6))
    green = _pick(sc.rng, _GREENS, 12)
    sc.cv.poly(_front(s * (x + 1), s * x, y0, top, z0), _scale(green, 0.8), L["vegetation"], M.FOLIAGE)
    sc.cv.poly(_side(s * x, y0, top, z0, z1), green, L["vegetation"], M.FOLIAGE)


def _upright(
    sc: _Scene, x: float, z: float, y: tuple[float, float], width: float, color: Color, label: int
) -> None:
    sc.cv.poly(_front(x - width / 2, x + width / 2, y[0], y[1], z), color, label, M.METAL)


def _street_light(sc: _Scene, s: int, x: float, z: float) -> None:
    rng, y0 = sc.rng, sc.st.curb
    top = y0 + float(rng.uniform(5.5, 9.0))
    color = _pick(rng, _METALS, 8)
    _upright(sc, x, z, (y0, top), float(rng.uniform(0.14, 0.26)), color, L["pole"])
    tip = x - s * float(rng.uniform(1.0, 2.5))  # the arm reaches over the road
    sc.cv.poly(
        [(x, top - 0.3, z), (tip, top, z), (tip, top + 0.1, z), (x, top - 0.15, z)], color, L["pole"], M.METAL
    )
    head = sorted((tip, tip - s * 0.5))
    sc.cv.poly(_front(head[0], head[1], top - 0.15, top + 0.05, z), color, L["pole"], M.METAL)
    if rng.random() < 0.35:
        _sign(sc, x, z - 0.05, y0 + float(rng.uniform(2.2, 3.2)))


def _sign(sc: _Scene, x: float, z: float, y: float) -> None:
    """Traffic sign face centred at (x, y, z): circle, triangle, square or diamond, with a rim."""
    rng = sc.rng
    size = float(rng.uniform(0.5, 0.85))
    outer, inner = _SIGNS[int(rng.integers(len(_SIGNS)))]
    shape = int(rng.integers(4))
    for k, color in ((1.0, outer), (0.72, inner)):
        r = size / 2 * k
        if shape == 0:
            sc.cv.ellipse((x, y, z), r, r, color, L["traffic sign"], M.PAINT)
            continue
        corners = {
            1: [(x - r, y + r * 0.6), (x + r, y + r * 0.6), (x, y - r * 1.1)],
            2: [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)],
            3: [(x, y - r * 1.3), (x + r * 1.3, y), (x, y + r * 1.3), (x - r * 1.3, y)],
        }[shape]
        sc.cv.poly([(px, py, z) for px, py in corners], color, L["traffic sign"], M.PAINT)


def _sign_post(sc: _Scene, x: float, z: float) -> None:
    rng, y0 = sc.rng, sc.st.curb
    top = y0 + float(rng.uniform(2.0, 2.9))
    _upright(sc, x, z, (y0, top), float(rng.uniform(0.06, 0.1)), _jitter(rng, (140, 140, 140), 15), L["pole"])
    _sign(sc, x, z - 0.02, top)
    if rng.random() < 0.3:
        _sign(sc, x, z - 0.02, top - float(rng.uniform(0.7, 0.9)))


def _traffic_light(sc: _Scene, s: int, x: float, z: float) -> None:
    """Traffic light on a post at the curb, or hanging from an arm over the road."""
    rng, y0 = sc.rng, sc.st.curb
    pole = _pick(rng, [(90, 92, 95), (40, 40, 42), (200, 170, 40)], 8)
    overhead = rng.random() < 0.4
    top = y0 + float(rng.uniform(5.0, 6.5) if overhead else rng.uniform(2.6, 3.8))
    _upright(sc, x, z, (y0, top + 0.1), float(rng.uniform(0.12, 0.2)), pole, L["pole"])
    hx = x - s * float(rng.uniform(2.5, 5.0)) if overhead else x
    if overhead:
        sc.cv.poly(_front(min(x, hx), max(x, hx), top, top + 0.12, z), pole, L["pole"], M.METAL)
    box = _pick(rng, [(35, 35, 35), (60, 60, 55), (180, 160, 40)], 8)
    yb = top - 0.95 - (0.1 if overhead else 0.0)
    sc.cv.poly(_front(hx - 0.17, hx + 0.17, yb, yb + 0.95, z - 0.1), box, L["traffic light"], M.METAL)
    on = int(rng.integers(3))
    for k, lamp in enumerate([(230, 40, 30), (240, 170, 30), (40, 220, 120)]):
        color = lamp if k == on else _scale(lamp, 0.25)
        sc.cv.ellipse((hx, yb + 0.78 - k * 0.3, z - 0.12), 0.1, 0.1, color, L["traffic light"], M.GLASS)


def _static_object(sc: _Scene, x: float, z: float) -> None:
    """Bins, boxes and benches: labelled 'static', which evaluation ignores."""
    w, h = float(sc.rng.uniform(0.4, 1.6)), float(sc.rng.uniform(0.5, 1.2))
    y0 = sc.st.curb
    sc.cv.poly(_front(x - w / 2, x + w / 2, y0, y0 + h, z), _pick(sc.rng, _PAINTS, 20), L["static"], M.PAINT)


# ---------------------------------------------------------------------------------------- people and bikes


def _figure(
    sc: _Scene, x: float, z: float, y0: float, height: float, label: int, *, seated: bool, profile: bool
) -> None:
    """A person facing the camera (or in profile), standing on ``y0`` or seated on a bike."""
    rng, k = sc.rng, height / 1.75
    shirt, trousers, skin, hair = (_pick(rng, c) for c in (_CLOTHES, _CLOTHES, _SKIN, _HAIR))
    hip = y0 + (0.9 if seated else 0.82) * k
    shoulder = hip + 0.58 * k
    half_hip, half_sh = (0.1 if profile else 0.17) * k, (0.12 if profile else 0.22) * k
    stride = float(rng.uniform(-0.25, 0.25)) * k
    leg, arm = 0.07 * k, 0.045 * k
    foot_y = y0 + (0.3 if seated else 0.0)
    for side in (-1, 1):  # legs
        top_x = x + side * (0.02 if profile else 0.09) * k
        foot_x = top_x + side * (stride if profile else 0.04 * k)
        pts = [
            (top_x - leg, hip, z),
            (top_x + leg, hip, z),
            (foot_x + leg, foot_y, z),
            (foot_x - leg, foot_y, z),
        ]
        sc.cv.poly(pts, trousers, label, M.CLOTH)
    zt = z - 0.05
    torso = [(x - half_hip, hip - 0.05, zt), (x + half_hip, hip - 0.05, zt), (x + half_sh, shoulder, zt),
             (x - half_sh, shoulder, zt)]  # fmt: skip
    sc.cv.poly(torso, shirt, label, M.CLOTH)
    za = z - 0.08
    for side in (-1, 1):  # arms, swinging
        sx = x + side * half_sh
        hx = sx + side * 0.05 * k + float(rng.uniform(-0.12, 0.12)) * k
        hand = hip - 0.08 * k
        pts = [(sx - arm, shoulder, za), (sx + arm, shoulder, za), (hx + arm, hand, za), (hx - arm, hand, za)]
        sc.cv.poly(pts, shirt, label, M.CLOTH)
    head = shoulder + 0.14 * k
    sc.cv.ellipse((x, head, z - 0.06), 0.085 * k, 0.115 * k, skin, label, M.SKIN)
    sc.cv.ellipse((x, head + 0.05 * k, z - 0.07), 0.09 * k, 0.07 * k, hair, label, M.CLOTH)
    if rng.random() < 0.25:  # a bag or backpack belongs to the person
        bx = x + float(rng.choice([-1, 1])) * half_sh
        bag = _front(bx - 0.1 * k, bx + 0.1 * k, hip - 0.15 * k, hip + 0.2 * k, z - 0.09)
        sc.cv.poly(bag, _pick(rng, _CLOTHES), label, M.CLOTH)


def _cyclist(sc: _Scene, x: float, z: float, *, motor: bool, profile: bool) -> None:
    """Bicycle or motorcycle with its rider, seen from behind (riding along) or in profile (crossing)."""
    rng, cv = sc.rng, sc.cv
    vehicle = L["motorcycle"] if motor else L["bicycle"]
    frame = _pick(rng, _PAINTS, 15)
    height = float(rng.uniform(1.6, 1.85))
    if profile:
        d = float(rng.choice([-1, 1]))  # direction of travel
        r, zf = (0.33 if motor else 0.35), z - 0.02
        rear, front = x - d * 0.55, x + d * 0.55
        if motor:
            cv.ellipse((rear, r, z), r, r, _TYRE, vehicle, M.METAL)
            cv.ellipse((front, r, z), r, r, _TYRE, vehicle, M.METAL)
            body = [
                (rear, 0.45, zf),
                (front, 0.5, zf),
                (front - d * 0.2, 0.95, zf),
                (rear + d * 0.1, 0.85, zf),
            ]
            cv.poly(body, frame, vehicle, M.PAINT)
        else:
            for wx in (rear, front):
                cv.stroke([(wx, r, z)], 0.05, _TYRE, vehicle, circle=r)
            saddle, bars = (x - d * 0.1, 0.9, zf), (front - d * 0.1, 1.05, zf)
            for a, b in [((rear, r, zf), (x, r, zf)), ((x, r, zf), saddle), ((x, r, zf), bars),
                         ((rear, r, zf), saddle), ((front, r, zf), bars)]:  # fmt: skip
                cv.stroke([a, b], 0.04, frame, vehicle)
        _figure(sc, x - d * 0.05, z - 0.1, 0.0, height, L["rider"], seated=True, profile=True)
        return
    _upright(sc, x, z + 0.3, (0.0, 0.7), 0.16 if motor else 0.05, _TYRE, vehicle)  # rear wheel
    if motor:
        cv.poly(_front(x - 0.3, x + 0.3, 0.35, 0.9, z), frame, vehicle, M.PAINT)
        cv.poly(_front(x - 0.08, x + 0.08, 0.7, 0.78, z - 0.01), (220, 30, 30), vehicle, M.GLASS)
    cv.stroke([(x - 0.3, 1.0, z + 0.5), (x + 0.3, 1.0, z + 0.5)], 0.04, frame, vehicle)  # handlebar
    _figure(sc, x, z - 0.1, 0.0, height, L["rider"], seated=True, profile=False)


# ------------------------------------------------------------------------------------------------ vehicles

# kind -> (width, length, height) ranges in metres, ground clearance, window bottom as a share of the body
_VEHICLES = {
    "car": ((1.6, 2.0), (3.8, 5.0), (1.35, 1.65), 0.28, 0.5),
    "truck": ((2.3, 2.6), (6.0, 9.0), (2.9, 3.8), 0.45, 0.5),
    "bus": ((2.45, 2.6), (10.0, 12.5), (2.9, 3.4), 0.45, 0.3),
}


def _wheel_disc(sc: _Scene, x: float, zc: float, r: float, label: int) -> None:
    """Wheel on a side face in the plane X = x: a 12-gon in (Y, Z), projected."""
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    sc.cv.poly([(x, r + r * np.sin(a), zc + r * np.cos(a)) for a in t.tolist()], _TYRE, label, M.METAL)


def _vehicle(sc: _Scene, kind: str, xc: float, z: float, towards: bool) -> None:
    """Box-shaped vehicle on the road: shadow, roof, side face (when visible), face toward the camera."""
    rng, cv = sc.rng, sc.cv
    (w0, w1), (l0, l1), (h0, h1), clear, belt_share = _VEHICLES[kind]
    w, length, h = float(rng.uniform(w0, w1)), float(rng.uniform(l0, l1)), float(rng.uniform(h0, h1))
    x0, x1, label = xc - w / 2, xc + w / 2, L[kind]
    paint, glass = _pick(rng, _PAINTS, 10), _jitter(rng, (45, 52, 62), 8)
    belt = clear + belt_share * (h - clear)  # bottom of the windows
    cv.shadow(_flat(x0 - 0.2, x1 + 0.2, 0.0, z - 0.3, z + length), 0.45)
    cv.poly(_flat(x0, x1, h, z, z + length), _scale(paint, 0.9), label, M.PAINT)
    xs = x0 if xc > 0 else x1  # the side that faces the road centre
    if abs(xs) > 0.2 and np.sign(xs) == np.sign(xc):
        cv.poly(_side(xs, clear, h, z, z + length), _scale(paint, 0.8), label, M.PAINT)
        windows = {
            "car": (z + 0.25 * length, z + 0.8 * length),
            "truck": (z + 0.3, z + 2.0) if towards else (z + length - 2.2, z + length - 0.3),  # the cab's
            "bus": (z + 0.8, z + length - 0.6),
        }[kind]
        cv.poly(_side(xs, belt, h - 0.12, *windows), glass, label, M.GLASS)
        axles = [z + 2.2, z + length - 3.0] if kind == "bus" else [z + 0.2 * length, z + 0.82 * length]
        for za in axles:
            _wheel_disc(sc, xs, za, clear + 0.05 if kind == "car" else 0.5, label)
    cv.poly(_front(x0, x1, clear, h, z), paint, label, M.PAINT)  # the face toward the camera
    for wx in (x0 + 0.15, x1 - 0.15):
        _upright(sc, wx, z + 0.01, (0.0, clear + 0.02), 0.26, _TYRE, label)
    if kind != "truck" or towards:  # a truck's cargo box has no rear window
        i = 0.12 * w
        pane = [(x0 + i, belt, z - 0.01), (x1 - i, belt, z - 0.01), (x1 - 1.3 * i, h - 0.1, z - 0.01),
                (x0 + 1.3 * i, h - 0.1, z - 0.01)]  # fmt: skip
        cv.poly(pane, glass, label, M.GLASS)
    lamp = (250, 245, 220) if towards else (210, 30, 25)
    for lx in (x0 + 0.2, x1 - 0.2):
        cv.poly(_front(lx - 0.12, lx + 0.12, clear + 0.25, clear + 0.4, z - 0.02), lamp, label, M.GLASS)
    cv.poly(
        _front(xc - 0.26, xc + 0.26, clear + 0.08, clear + 0.2, z - 0.02), (230, 230, 225), label, M.PAINT
    )


def _car_profile(sc: _Scene, x: float, z: float) -> None:
    """A car crossing the street, seen from the side (plane Z = z)."""
    rng, cv = sc.rng, sc.cv
    length, h = float(rng.uniform(3.8, 4.8)), float(rng.uniform(1.35, 1.6))
    paint, glass = _pick(rng, _PAINTS, 10), _jitter(rng, (45, 52, 62), 8)
    x0, belt = x - length / 2, 0.28 + 0.55 * (h - 0.28)
    cv.poly(_front(x0, x0 + length, 0.28, belt, z), paint, L["car"], M.PAINT)
    cabin = [(0.18, belt), (0.82, belt), (0.68, h), (0.3, h)]  # (share of the length, height)
    cv.poly([(x0 + a * length, y, z) for a, y in cabin], paint, L["car"], M.PAINT)
    window = [(x + (x0 + a * length - x) * 0.9, belt + (y - belt) * 0.85 + 0.03, z - 0.01) for a, y in cabin]
    cv.poly(window, glass, L["car"], M.GLASS)
    for wx in (x0 + 0.2 * length, x0 + 0.8 * length):
        cv.ellipse((wx, 0.32, z - 0.02), 0.32, 0.32, _TYRE, L["car"], M.METAL)


# -------------------------------------------------------------------------------------------- the scene

Item = tuple[float, Callable[[], None]]  # (depth, draw): drawn far to near


def _side_items(sc: _Scene, s: int, segs: list[tuple[float, float, str]]) -> list[Item]:
    """Facades, walls, fences, trees, lights, signs, bins and pedestrians on side ``s`` of the street."""
    rng, st = sc.rng, sc.st
    xb, (wa, wb) = st.building_x(s), st.walk_range(s)
    items: list[Item] = []

    def add(z: float, fn: Callable[..., None], *args: object, **kw: object) -> None:
        items.append((z, lambda: fn(*args, **kw)))

    for z0, z1, kind in segs:
        if kind == "building":
            add(z1, _facade, sc, s, xb + float(rng.uniform(0, 0.8)), z0, z1, float(rng.uniform(6, 30)))
            if rng.random() < 0.2:
                add(z1, _hedge, sc, s, xb - 1.0, z0 + 0.5, z1 - 0.5)
            continue
        if kind == "street":
            for zz in (z0 - 0.6, z1 + 0.6):
                if rng.random() < 0.6:
                    add(zz, _traffic_light, sc, s, s * (st.edge[s] + 0.5), zz)
            if rng.random() < 0.5:
                add((z0 + z1) / 2, _car_profile, sc, s * (xb + float(rng.uniform(1, 8))), (z0 + z1) / 2)
            continue
        if kind in _BOUNDARIES:
            add(z1, _BOUNDARIES[kind], sc, s, xb, z0, z1)
        if rng.random() < 0.6:  # set-back building behind
            add(z1 + 60, _facade, sc, s, xb + float(rng.uniform(8, 20)), z0, z1, float(rng.uniform(8, 25)))
        for zz in np.arange(z0 + rng.uniform(0, 4), z1, rng.uniform(3, 7)).tolist():  # trees behind the line
            add(
                z1 + 30,
                _tree,
                sc,
                s * (xb + float(rng.uniform(2, 12))),
                zz + 2,
                st.curb,
                float(rng.uniform(1, 2)),
            )
    if rng.random() < 0.6:  # a row of trees on the sidewalk
        for z in np.arange(rng.uniform(2, 12), st.z_end, rng.uniform(7, 20)).tolist():
            if rng.random() < 0.8:
                add(z, _tree, sc, s * float(rng.uniform(wa + 0.5, max(wa + 0.6, wb - 0.4))), z, st.curb)
    for z in np.arange(rng.uniform(3, 25), st.z_end, rng.uniform(15, 35)).tolist():
        add(z, _street_light, sc, s, s * (st.edge[s] + 0.4), z)
    if rng.random() < 0.3:
        z = float(rng.uniform(6, 40))
        add(z, _traffic_light, sc, s, s * (st.edge[s] + 0.5), z)
    for _ in range(int(rng.integers(0, 4))):
        z = float(rng.uniform(4, 50))
        add(z, _sign_post, sc, s * (st.edge[s] + float(rng.uniform(0.3, 0.8))), z)
    for _ in range(int(rng.integers(0, 3))):
        z = float(rng.uniform(4, 40))
        add(z, _static_object, sc, s * float(rng.uniform(wa + 0.3, wb)), z)
    for _ in range(int(rng.poisson(rng.uniform(1, 7)))):  # pedestrians, some in groups
        z = float(rng.uniform(3, 45))
        for k in range(int(rng.integers(1, 4)) if rng.random() < 0.3 else 1):
            zz, x = z + k * float(rng.uniform(0.3, 1.2)), s * float(rng.uniform(wa + 0.3, wb - 0.2))
            height, profile = float(rng.uniform(1.5, 1.95)), bool(rng.random() < 0.3)
            add(zz, _figure, sc, x, zz, st.curb, height, L["person"], seated=False, profile=profile)
    return items


def _road_items(sc: _Scene) -> list[Item]:
    """Parked cars, vehicles in the lanes, cyclists, and pedestrians on the crossing."""
    rng, st = sc.rng, sc.st
    items: list[Item] = []

    def add(z: float, fn: Callable[..., None], *args: object, **kw: object) -> None:
        items.append((z, lambda: fn(*args, **kw)))

    for s in (-1, 1):
        if rng.random() < 0.6:  # a row of parked cars
            for z in np.arange(rng.uniform(3, 10), min(st.z_end, 70), rng.uniform(5.2, 7.5)).tolist():
                if rng.random() < 0.75:
                    add(z, _vehicle, sc, "car", s * (st.edge[s] - 1.1), z, bool(rng.random() < 0.3))
    lanes = max(1, round((st.edge[-1] + st.edge[1]) / 3.3))
    lane_w = (st.edge[-1] + st.edge[1]) / lanes
    for _ in range(int(rng.poisson(rng.uniform(1, 6)))):
        xc = -st.edge[-1] + lane_w * (int(rng.integers(lanes)) + 0.5) + float(rng.normal(0, 0.25))
        z = float(rng.uniform(4, min(st.z_end - 5, 80)))
        kind = str(rng.choice(["car", "truck", "bus"], p=[0.7, 0.16, 0.14]))
        add(z, _vehicle, sc, kind, xc, z, bool(xc < 0 and rng.random() < 0.8))  # oncoming traffic on the left
    for _ in range(int(rng.poisson(0.8))):
        z = float(rng.uniform(4, 40))
        xc = float(rng.choice([-1, 1]) * rng.uniform(0.5, 2.5) + rng.uniform(-0.5, 0.5))
        add(z, _cyclist, sc, xc, z, motor=bool(rng.random() < 0.45), profile=bool(rng.random() < 0.3))
    if st.crossing:
        z0, depth = st.crossing
        for _ in range(int(rng.integers(0, 5))):
            z, x = z0 + float(rng.uniform(0.3, depth - 0.3)), float(rng.uniform(-st.edge[-1], st.edge[1]))
            add(
                z,
                _figure,
                sc,
                x,
                z,
                0.0,
                float(rng.uniform(1.5, 1.95)),
                L["person"],
                seated=False,
                profile=True,
            )
    return items


def _cast_shadows(sc: _Scene, s: int, segs: list[tuple[float, float, str]]) -> None:
    """The buildings on the shady side ``s`` throw shadows across the street."""
    st, xb = sc.st, sc.st.building_x(s)
    for z0, z1, kind in segs:
        if kind == "building":
            reach = xb - float(sc.rng.uniform(2, st.edge[s] + st.edge[-s] + 6))
            pts = [(s * xb, 0.0, z0), (s * reach, 0.0, z0 + 2), (s * reach, 0.0, z1 + 2), (s * xb, 0.0, z1)]
            sc.cv.shadow(pts, float(sc.rng.uniform(0.5, 0.7)))


def _ego_and_border(cv: _Canvas, rng: np.random.Generator) -> None:
    """Bonnet of the recording car and rectification border: labelled, ignored in evaluation."""
    if rng.random() < 0.5:
        top = cv.h * rng.uniform(0.88, 0.95)
        xs = np.linspace(0, cv.w, 24)
        ys = top + (cv.h - top) * 0.6 * ((xs - cv.w / 2) / (cv.w / 2)) ** 2
        pts = np.concatenate([np.stack([xs, ys], 1), [[cv.w, cv.h], [0, cv.h]]])  # (26, 2)
        p = [np.rint(pts * _ONE).astype(np.int32)]
        hood = _pick(rng, [(40, 40, 45), (200, 200, 205), (20, 30, 60)], 8)
        for buf, v in ((cv.img, _bgr(hood)), (cv.lab, L["ego vehicle"]), (cv.mat, M.PAINT), (cv.depth, 1.0)):
            cv2.fillPoly(buf, p, v, cv2.LINE_8, _SHIFT)
    if rng.random() < 0.15:
        b = int(cv.w * rng.uniform(0.005, 0.02)) + 1
        for cols in (np.s_[:, :b], np.s_[:, -b:]):
            cv.img[cols], cv.lab[cols], cv.mat[cols] = 0, L["rectification border"], M.SKY


def _finish(cv: _Canvas, rng: np.random.Generator, mood: str, haze: Color) -> np.ndarray:
    """Texture by material, shadows, fog, exposure, white balance, vignetting, blur, noise and gamma."""
    h, w = cv.h, cv.w
    amp = _TEXTURE * rng.uniform(0.6, 1.5, _TEXTURE.shape).astype(np.float32)  # (materials, 2)
    coarse = rng.standard_normal((h // 16 + 2, w // 16 + 2), np.float32)
    medium = rng.standard_normal((h // 3 + 2, w // 3 + 2), np.float32)
    low = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    high = 0.6 * cv2.resize(medium, (w, h)) + 0.4 * rng.standard_normal((h, w), np.float32)
    texture = 1 + amp[cv.mat, 0] * low + amp[cv.mat, 1] * high  # (H, W)
    img = cv.img * (texture * cv.shade)[..., None]
    density = {"sun": 0.004, "overcast": 0.012, "dusk": 0.008}[mood] * rng.uniform(0.3, 2.0)
    fog = 1 - np.exp(-density * np.minimum(cv.depth, 1e4))[..., None]  # (H, W, 1)
    fog[cv.lab == L["sky"]] = 0
    img = img * (1 - fog) + np.float32(_bgr(haze)) * fog
    exposure = {"sun": 1.0, "overcast": 0.9, "dusk": 0.6}[mood] * rng.uniform(0.75, 1.25)
    balance = rng.uniform(0.88, 1.12, 3).astype(np.float32)
    if mood == "dusk":
        balance *= np.array([0.8, 0.95, 1.15], np.float32)  # BGR: warmer
    yy, xx = np.ogrid[:h, :w]
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2  # (H, W)
    vignette = (1 - rng.uniform(0, 0.35) * r2 / 2).astype(np.float32)
    img = img * (np.float32(exposure) * vignette)[..., None] * balance
    if rng.random() < 0.2:
        k = int(rng.integers(3, 8))
        img = cv2.filter2D(img, -1, np.full((1, k), 1 / k, np.float32))  # horizontal motion blur
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
    img += np.float32(rng.uniform(1, 6)) * rng.standard_normal((h, w, 1), np.float32)  # sensor noise
    gamma = np.clip((np.arange(256) / 255) ** rng.uniform(0.75, 1.35) * 255, 0, 255).astype(np.uint8)
    return cv2.LUT(np.clip(img, 0, 255).astype(np.uint8), gamma)


def render_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene.

    Args:
        rng: source of all randomness (same state -> same scene).
        size: (height, width) in pixels.

    Returns:
        BGR uint8 image (H, W, 3) and Cityscapes labelIds uint8 (H, W).
    """
    cv = _Canvas(size, rng)
    mood = str(rng.choice(["sun", "overcast", "dusk"], p=[0.55, 0.35, 0.1]))
    sun_side = int(rng.choice([-1, 1]))
    shade = float(rng.uniform(0.55, 0.85)) if mood == "sun" else 0.92
    lit = {"sun": 0.02, "overcast": 0.05, "dusk": 0.35}[mood]
    sc = _Scene(cv, rng, _Street.sample(rng), lit, {sun_side: 1.0, -sun_side: shade})
    segs = {s: _segments(rng, sc.st.z_end) for s in (-1, 1)}
    haze = _draw_sky(cv, rng, mood)
    _backdrop(sc)
    _draw_ground(sc, segs)
    if mood == "sun":
        _cast_shadows(sc, -sun_side, segs[-sun_side])
    items = _side_items(sc, -1, segs[-1]) + _side_items(sc, 1, segs[1]) + _road_items(sc)
    for _, draw in sorted(items, key=lambda item: -item[0]):
        draw()
    _ego_and_border(cv, rng)
    return _finish(cv, rng, mood, haze), cv.lab


# ------------------------------------------------------------------------------------------- files on disk


def _frame_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _frame_paths(root: Path, split: str, index: int) -> tuple[Path, Path]:
    stem = f"{_CITY}_{index:06d}_000019"
    return (
        root / "leftImg8bit" / split / _CITY / f"{stem}_leftImg8bit.png",
        root / "gtFine" / split / _CITY / f"{stem}_gtFine_labelIds.png",
    )


def generate_demo(
    root: str | os.PathLike[str],
    splits: dict[str, int] | None = None,
    size: tuple[int, int] = (128, 256),
    seed: int = 0,
    *,
    classes: str = "categories",
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write generated street scenes under ``root`` in the Cityscapes layout.

    Args:
        root: output folder; ``build_dataset("demo", root, split)`` reads it.
        splits: frames per split, default ``{"train": 200, "val": 50}``.
        size: (height, width) of every frame.
        seed: base seed; frame i of a split depends only on (seed, split, i).
        classes: the class set the reader evaluates, recorded in the manifest: ``"categories"`` (the 7
            Cityscapes categories: flat, construction, object, nature, sky, human, vehicle; what the demo
            recipes train) or ``"cityscapes"`` (the 19 classes). The label files are Cityscapes labelIds
            either way; only the reader's mapping differs.
        progress: show a progress bar.
        overwrite: regenerate even when ``root`` already holds exactly this data.

    Returns:
        ``root`` as a Path. A manifest ``demo.json`` records what was generated; when it matches the request
        the call returns at once.

    Raises:
        FileExistsError: ``root`` holds a Cityscapes-like layout that this function did not write.
        ValueError: a size below 16x16, a negative count or an unknown class set.
    """
    if classes not in CLASS_SETS:
        raise ValueError(f"classes must be one of {sorted(CLASS_SETS)}, got {classes!r}")
    root = Path(root).expanduser()
    splits = dict(splits if splits is not None else {"train": 200, "val": 50})
    size = (int(size[0]), int(size[1]))
    if min(size) < 16 or any(n < 0 for n in splits.values()):
        raise ValueError(f"need size >= 16x16 and non-negative counts, got size={size}, splits={splits}")
    wanted = {"generator_version": GENERATOR_VERSION, "seed": seed, "size": list(size), "splits": splits}
    manifest = root / _MANIFEST
    old = json.loads(manifest.read_text()) if manifest.is_file() else None
    if old is not None and not overwrite and {k: v for k, v in old.items() if k != "classes"} == wanted:
        if old.get("classes", "cityscapes") != classes:  # same frames, another class set: only the manifest
            atomic_write_text(manifest, json.dumps({**wanted, "classes": classes}, indent=2) + "\n")
        return root
    wanted["classes"] = classes
    if not manifest.is_file() and ((root / "leftImg8bit").exists() or (root / "gtFine").exists()):
        raise FileExistsError(f"{root} holds leftImg8bit/ or gtFine/ but no {_MANIFEST}; not writing into it")
    manifest.unlink(missing_ok=True)  # the folder is incomplete until the new manifest is written
    for split in splits:
        for top in ("leftImg8bit", "gtFine"):
            shutil.rmtree(root / top / split / _CITY, ignore_errors=True)
    jobs = [(split, i) for split, n in splits.items() for i in range(n)]
    for split, i in tqdm(jobs, desc=f"demo data -> {root}", unit="frame", disable=not progress):
        image, label = render_scene(_frame_rng(seed, split, i), size)
        image_path, label_path = _frame_paths(root, split, i)
        write_png(image_path, image)
        write_png(label_path, label)
    atomic_write_text(manifest, json.dumps(wanted, indent=2) + "\n")
    return root


def _what_generation_does(root: Path, splits: dict, size: tuple[int, int], seed: int, overwrite: bool) -> str:
    """Whether ``generate_demo`` will reuse ``root``'s frames, replace them, or write new ones (said to the user)."""
    manifest = root / _MANIFEST
    if not manifest.is_file():
        return "generated"
    old = json.loads(manifest.read_text())
    wanted = {"generator_version": GENERATOR_VERSION, "seed": seed, "size": list(size), "splits": splits}
    if not overwrite and {k: v for k, v in old.items() if k != "classes"} == wanted:
        return "reused: it already holds exactly these frames; --overwrite regenerates them"
    changed = [k for k in wanted if old.get(k) != wanted[k]] or ["--overwrite"]
    return f"regenerated: the earlier frames were replaced ({', '.join(changed)} changed)"


def write_demo_video(
    path: str | os.PathLike[str],
    scenes: int = 6,
    size: tuple[int, int] = (256, 512),
    *,
    fps: int = 10,
    seconds_per_scene: float = 1.5,
    seed: int = 0,
) -> Path:
    """Write a short street video (mp4) for the camera demo: each scene pans sideways, then cuts to the next.

    Frames come from split ``"video"`` of the generator, so they never repeat a training frame.
    """
    h, w = size
    wide = int(w * 1.25)  # render wider than the frame and slide a window across it
    steps = max(1, int(fps * seconds_per_scene))
    sink = VideoSink(path, fps)  # written beside the target, renamed into place when complete
    keep = False
    try:
        for s in tqdm(range(scenes), desc=f"demo video -> {path}", unit="scene"):
            image, _ = render_scene(_frame_rng(seed, "video", s), (h, wide))
            for t in range(steps):
                x0 = round((wide - w) * t / max(1, steps - 1))
                sink.write(np.ascontiguousarray(image[:, x0 : x0 + w]))
        keep = True
    finally:
        sink.close(keep=keep)  # a crash mid-way leaves any earlier video in place
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="segkd demo-data", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="output folder")
    parser.add_argument("--train", type=int, default=200, help="frames in split train")
    parser.add_argument("--val", type=int, default=50, help="frames in split val")
    parser.add_argument(
        "--size",
        type=hw_arg,
        default=(128, 256),
        help="HEIGHTxWIDTH (default 128x256, what the demo recipes train at)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--classes",
        choices=sorted(CLASS_SETS),
        default="categories",
        help="class set the reader evaluates: the 7 Cityscapes categories (default, what the demo recipes "
        "train) or the 19 Cityscapes classes",
    )
    parser.add_argument(
        "--video-size", type=hw_arg, metavar="HxW", help="size of the --video frames (default: --size)"
    )
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if up to date")
    parser.add_argument(
        "--video", metavar="PATH", help="also write a short street video (mp4) for the camera demo"
    )
    args = parser.parse_args(argv)
    splits = {"train": args.train, "val": args.val}
    what = _what_generation_does(Path(args.root), splits, args.size, args.seed, args.overwrite)
    root = generate_demo(
        args.root, splits, args.size, args.seed, classes=args.classes, progress=True, overwrite=args.overwrite
    )
    print(
        f"demo data in {root} ({what}): {splits} frames of {args.size[0]}x{args.size[1]}, classes: {args.classes}"
    )
    if args.video:
        size = args.video_size or args.size
        print(f"demo video: {write_demo_video(args.video, size=size, seed=args.seed)}")


if __name__ == "__main__":
    main()
