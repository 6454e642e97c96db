"""Drawn street scenes: a seeded generator of road images with and without roadwork.

Lets the simulator, the demo, the tests and CI's tiny training run with no photo data at all. A scene
has sky, buildings, trees, a road in perspective with lane markings, sidewalks and cars. The roadwork
variant adds a random subset of work-zone cues (cones, drums, red-white barrier boards, a triangular
roadwork sign, workers in hi-vis, a lane closure taper), so that no single cue defines the class. The
negatives carry orange and red distractors (orange cars, red signs, autumn trees, brake lights).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from roadminer.imaging.decode import encode_jpeg

DEFAULT_SIZE = (512, 384)
CLASS_DIRS = {True: "roadwork", False: "no_roadwork"}

Color = tuple[int, int, int]

ORANGE: Color = (255, 110, 10)
HIVIS_YELLOW: Color = (215, 255, 40)
WHITE: Color = (245, 245, 245)
RED: Color = (210, 20, 25)
BLACK: Color = (20, 20, 20)


def _jitter(rng: np.random.Generator, c: Color, amount: int = 20) -> Color:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in c)  # type: ignore[return-value]


class _Scene:
    """Geometry shared by the drawing steps: horizon, vanishing point and road edges."""

    def __init__(self, rng: np.random.Generator, w: int, h: int) -> None:
        self.rng, self.w, self.h = rng, w, h
        self.horizon = int(h * rng.uniform(0.36, 0.5))
        self.vx = w * rng.uniform(0.38, 0.62)
        self.half_bottom = w * rng.uniform(0.55, 0.9)  # road half-width at the bottom edge
        self.bottom_cx = w * rng.uniform(0.35, 0.65)
        self.lanes = int(rng.integers(2, 4))

    def depth(self, y: float) -> float:
        """0 at the horizon, 1 at the bottom edge."""
        return max(0.0, (y - self.horizon) / (self.h - self.horizon))

    def road_x(self, y: float, u: float) -> float:
        """x of the road at height y and lateral position u (-1 left edge .. +1 right edge)."""
        s = self.depth(y)
        cx = self.vx + (self.bottom_cx - self.vx) * s
        return cx + u * self.half_bottom * s

    def band(self, u: float) -> list[tuple[float, float]]:
        """Polygon of the strip between lateral positions -u and +u, from the horizon to the bottom."""
        top, h = self.horizon, self.h
        return [
            (self.road_x(top, -u), top),
            (self.road_x(h, -u), h),
            (self.road_x(h, u), h),
            (self.road_x(top, u), top),
        ]


def _sky(img: Image.Image, sc: _Scene) -> None:
    rng = sc.rng
    palettes = [
        ((90, 150, 230), (190, 220, 250)),
        ((150, 155, 165), (210, 212, 215)),
        ((60, 90, 160), (240, 170, 120)),
    ]
    top, bottom = palettes[int(rng.choice(3, p=[0.6, 0.3, 0.1]))]
    top, bottom = _jitter(rng, top, 15), _jitter(rng, bottom, 15)
    t = np.linspace(0.0, 1.0, sc.horizon + 1, dtype=np.float32)[:, None, None]
    grad = np.asarray(top, np.float32) + (np.asarray(bottom, np.float32) - np.asarray(top, np.float32)) * t
    sky = np.broadcast_to(grad, (sc.horizon + 1, sc.w, 3)).astype(np.uint8)
    img.paste(Image.fromarray(np.ascontiguousarray(sky), "RGB"), (0, 0))


def _buildings(d: ImageDraw.ImageDraw, sc: _Scene) -> None:
    rng = sc.rng
    x = -int(rng.integers(0, 40))
    while x < sc.w:
        bw = int(rng.integers(sc.w // 12, sc.w // 4))
        bh = int(rng.integers(sc.h // 12, sc.h // 3))
        base = _jitter(
            rng, [(170, 160, 150), (120, 110, 105), (200, 190, 170), (140, 150, 160)][rng.integers(4)], 25
        )
        top = sc.horizon - bh
        d.rectangle([x, top, x + bw, sc.horizon + 2], fill=base)
        win = _jitter(rng, (90, 110, 130), 20)
        step = max(6, bw // 6)
        for wx in range(x + 4, x + bw - 6, step):
            for wy in range(top + 5, sc.horizon - 8, max(8, step)):
                d.rectangle([wx, wy, wx + step // 2, wy + step // 2], fill=win)
        x += bw + int(rng.integers(0, 15))


def _tree(
    d: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float, s: float, autumn: bool
) -> None:
    trunk_h, r = 40 * s, 26 * s
    d.rectangle([x - 3 * s, y - trunk_h, x + 3 * s, y], fill=(90, 60, 35))
    green = [(50, 110, 40), (70, 130, 50)]
    palette = [(200, 90, 20), (190, 40, 25), (220, 150, 30), *green] if autumn else green
    for _ in range(5):
        cx = x + rng.uniform(-0.6, 0.6) * r
        cy = y - trunk_h - rng.uniform(-0.3, 0.8) * r
        rr = r * rng.uniform(0.6, 1.0)
        d.ellipse(
            [cx - rr, cy - rr, cx + rr, cy + rr], fill=_jitter(rng, palette[rng.integers(len(palette))], 20)
        )


def _road(d: ImageDraw.ImageDraw, sc: _Scene) -> None:
    rng = sc.rng
    h = sc.h
    ground = _jitter(rng, (110, 120, 90), 20)
    d.rectangle([0, sc.horizon, sc.w, h], fill=ground)
    walk = _jitter(rng, (175, 170, 165), 12)
    d.polygon(sc.band(1.35), fill=walk)
    asphalt = _jitter(rng, (85, 85, 88), 15)
    d.polygon(sc.band(1), fill=asphalt)
    # Edge lines and dashed lane dividers in perspective.
    for u in (-0.95, 0.95):
        d.line(
            [(sc.road_x(sc.horizon, u), sc.horizon), (sc.road_x(h, u), h)],
            fill=WHITE,
            width=max(1, sc.w // 200),
        )
    yellow_centre = bool(rng.random() < 0.3)
    for k in range(1, sc.lanes):
        u = -1 + 2 * k / sc.lanes
        colour = (230, 190, 40) if yellow_centre and k == sc.lanes // 2 else WHITE
        n_dash = 14
        for i in range(n_dash):
            t0, t1 = (i / n_dash) ** 1.8, ((i + 0.5) / n_dash) ** 1.8
            y0, y1 = sc.horizon + t0 * (h - sc.horizon), sc.horizon + t1 * (h - sc.horizon)
            wline = max(1, int(6 * sc.depth(y1) * sc.w / 512))
            d.line([(sc.road_x(y0, u), y0), (sc.road_x(y1, u), y1)], fill=colour, width=wline)


def _car(
    d: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float, s: float, colour: Color
) -> None:
    cw, ch = 120 * s, 70 * s
    d.rectangle([x - cw / 2, y - ch, x + cw / 2, y - ch * 0.15], fill=colour)
    d.polygon(
        [
            (x - cw * 0.38, y - ch),
            (x - cw * 0.3, y - ch * 1.45),
            (x + cw * 0.3, y - ch * 1.45),
            (x + cw * 0.38, y - ch),
        ],
        fill=_jitter(rng, colour, 10),
    )
    d.rectangle([x - cw * 0.28, y - ch * 1.38, x + cw * 0.28, y - ch * 1.02], fill=(60, 75, 95))
    for sx in (-0.33, 0.33):
        d.rectangle([x + sx * cw - 10 * s, y - ch * 0.25, x + sx * cw + 10 * s, y], fill=BLACK)
    # rear lights: red distractors in every scene with cars
    for sx in (-0.42, 0.36):
        d.rectangle([x + sx * cw, y - ch * 0.8, x + (sx + 0.06) * cw, y - ch * 0.62], fill=(230, 30, 30))


def _cone(d: ImageDraw.ImageDraw, x: float, y: float, s: float) -> None:
    ch, cw = 48 * s, 30 * s
    d.polygon(
        [(x - cw / 2, y), (x + cw / 2, y), (x + cw * 0.08, y - ch), (x - cw * 0.08, y - ch)], fill=ORANGE
    )
    for f0, f1 in ((0.35, 0.5), (0.62, 0.74)):
        w0, w1 = cw / 2 * (1 - f0 * 0.84), cw / 2 * (1 - f1 * 0.84)
        d.polygon(
            [(x - w0, y - f0 * ch), (x + w0, y - f0 * ch), (x + w1, y - f1 * ch), (x - w1, y - f1 * ch)],
            fill=WHITE,
        )
    d.rectangle([x - cw * 0.65, y - 4 * s, x + cw * 0.65, y], fill=(40, 40, 40))


def _drum(d: ImageDraw.ImageDraw, x: float, y: float, s: float) -> None:
    dh, dw = 60 * s, 32 * s
    bands = 5
    for i in range(bands):
        y0, y1 = y - dh * (i + 1) / bands, y - dh * i / bands
        d.rectangle([x - dw / 2, y0, x + dw / 2, y1], fill=ORANGE if i % 2 == 0 else WHITE)
    d.ellipse([x - dw / 2, y - dh - 5 * s, x + dw / 2, y - dh + 5 * s], fill=(230, 95, 10))


def _barrier(d: ImageDraw.ImageDraw, x: float, y: float, s: float, rng: np.random.Generator) -> None:
    bw, bh = 150 * s * rng.uniform(0.8, 1.4), 26 * s
    top = y - 45 * s
    for lx in (x - bw * 0.4, x + bw * 0.4):  # legs
        d.rectangle([lx - 2 * s, top, lx + 2 * s, y], fill=(60, 60, 60))
    img_box = [x - bw / 2, top - bh, x + bw / 2, top]
    d.rectangle(img_box, fill=WHITE)
    stripe = 18 * s
    red = RED if rng.random() < 0.7 else ORANGE
    k = -bh
    while k < bw:
        x0 = x - bw / 2 + k
        poly = [(x0, top), (x0 + stripe, top), (x0 + stripe + bh, top - bh), (x0 + bh, top - bh)]
        poly = [(min(max(px, img_box[0]), img_box[2]), py) for px, py in poly]
        d.polygon(poly, fill=red)
        k += 2 * stripe


def _roadwork_sign(d: ImageDraw.ImageDraw, x: float, y: float, s: float, rng: np.random.Generator) -> None:
    pole_h, r = 90 * s, 30 * s
    d.rectangle([x - 2 * s, y - pole_h, x + 2 * s, y], fill=(120, 120, 120))
    cy = y - pole_h - r * 0.6
    if rng.random() < 0.5:  # European red-bordered triangle with a digging worker
        pts = [(x, cy - r), (x - r * 1.05, cy + r * 0.75), (x + r * 1.05, cy + r * 0.75)]
        d.polygon(pts, fill=RED)
        inner = [(x, cy - r * 0.55), (x - r * 0.68, cy + r * 0.52), (x + r * 0.68, cy + r * 0.52)]
        d.polygon(inner, fill=WHITE)
    else:  # North-American orange diamond
        d.polygon([(x, cy - r), (x - r, cy), (x, cy + r), (x + r, cy)], fill=ORANGE)
    # worker glyph: head, body, shovel
    d.ellipse([x - r * 0.1, cy - r * 0.25, x + r * 0.06, cy - r * 0.1], fill=BLACK)
    d.line([(x - r * 0.02, cy - r * 0.1), (x - r * 0.15, cy + r * 0.3)], fill=BLACK, width=max(1, int(3 * s)))
    d.line([(x - r * 0.05, cy + r * 0.05), (x + r * 0.3, cy + r * 0.3)], fill=BLACK, width=max(1, int(2 * s)))
    d.polygon(
        [(x + r * 0.15, cy + r * 0.4), (x + r * 0.4, cy + r * 0.4), (x + r * 0.3, cy + r * 0.2)], fill=BLACK
    )


def _worker(d: ImageDraw.ImageDraw, x: float, y: float, s: float, rng: np.random.Generator) -> None:
    hh = 90 * s
    vest = ORANGE if rng.random() < 0.5 else HIVIS_YELLOW
    trousers = _jitter(rng, (40, 50, 80), 15)
    d.rectangle([x - 9 * s, y - hh * 0.45, x - 1 * s, y], fill=trousers)
    d.rectangle([x + 1 * s, y - hh * 0.45, x + 9 * s, y], fill=trousers)
    d.rectangle([x - 12 * s, y - hh * 0.85, x + 12 * s, y - hh * 0.42], fill=vest)
    for f in (0.6, 0.72):  # reflective bands
        d.rectangle([x - 12 * s, y - hh * f - 2 * s, x + 12 * s, y - hh * f + 2 * s], fill=(225, 225, 225))
    d.ellipse([x - 7 * s, y - hh, x + 7 * s, y - hh * 0.85], fill=(220, 180, 150))
    d.chord(
        [x - 8 * s, y - hh * 1.04, x + 8 * s, y - hh * 0.9],
        180,
        360,
        fill=WHITE if rng.random() < 0.5 else HIVIS_YELLOW,
    )


def _stop_sign(d: ImageDraw.ImageDraw, x: float, y: float, s: float) -> None:
    pole_h, r = 80 * s, 18 * s
    d.rectangle([x - 2 * s, y - pole_h, x + 2 * s, y], fill=(120, 120, 120))
    cy = y - pole_h - r
    pts = [
        (x + r * math.cos(math.pi / 8 + k * math.pi / 4), cy + r * math.sin(math.pi / 8 + k * math.pi / 4))
        for k in range(8)
    ]
    d.polygon(pts, fill=RED)
    d.rectangle([x - r * 0.6, cy - r * 0.15, x + r * 0.6, cy + r * 0.15], fill=WHITE)


def _place(sc: _Scene, u: float, near: float, far: float, gain: float = 1.4) -> tuple[float, float, float]:
    """A point on the road plane at lateral u with depth in [near, far]; returns (x, y, scale)."""
    depth = sc.rng.uniform(near, far)
    y = sc.horizon + depth * (sc.h - sc.horizon)
    return sc.road_x(y, u), y, gain * depth * sc.w / 512


def draw_scene(
    rng: np.random.Generator, roadwork: bool, size: tuple[int, int] | int = DEFAULT_SIZE
) -> Image.Image:
    """Draw one street scene (``size`` = (width, height)); ``roadwork`` adds work-zone cues."""
    w, h = (size, size) if isinstance(size, int) else size
    sc = _Scene(rng, w, h)
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    _sky(img, sc)
    _buildings(d, sc)
    _road(d, sc)

    # Collect depth-sorted props so that near objects are drawn over far ones.
    props: list[tuple[float, str, float, float, float]] = []

    def put(kind: str, u: float, near: float, far: float, gain: float = 1.4) -> None:
        x, y, s = _place(sc, u, near, far, gain)
        props.append((y, kind, x, y, s))

    autumn = bool(rng.random() < (0.3 if not roadwork else 0.15))
    for _ in range(int(rng.integers(2, 7))):
        side = rng.choice([-1.0, 1.0])
        put("tree", side * rng.uniform(1.45, 2.4), 0.05, 0.7, gain=2.5)
    for _ in range(int(rng.integers(0, 4))):
        lane = int(rng.integers(0, sc.lanes))
        u = -1 + (2 * lane + 1) / sc.lanes
        put("car", u, 0.05, 0.75, gain=1.0)
    if not roadwork:
        if rng.random() < 0.5:
            put("stop", rng.choice([-1.2, 1.2]), 0.2, 0.8)
        if rng.random() < 0.4:
            put("orange_car", float(rng.uniform(-0.6, 0.6)), 0.3, 0.9)
    else:
        cues = ["cones", "drums", "barrier", "sign", "worker", "taper"]
        k = int(rng.integers(1, 4))
        chosen = set(rng.choice(cues, size=k, replace=False).tolist())
        side = float(rng.choice([-1.0, 1.0]))
        if "cones" in chosen:
            for _ in range(int(rng.integers(2, 7))):
                put("cone", side * rng.uniform(0.3, 1.0), 0.15, 0.95)
        if "taper" in chosen:  # a diagonal line of cones closing a lane
            n = int(rng.integers(4, 9))
            d0, d1 = rng.uniform(0.15, 0.4), rng.uniform(0.6, 0.95)
            for i in range(n):
                t = i / max(1, n - 1)
                depth = d0 + (d1 - d0) * t
                y = sc.horizon + depth * (sc.h - sc.horizon)
                u = side * (1.0 - 0.7 * t)
                props.append((y, "cone", sc.road_x(y, u), y, 1.4 * depth * sc.w / 512))
        if "drums" in chosen:
            for _ in range(int(rng.integers(2, 6))):
                put("drum", side * rng.uniform(0.4, 1.05), 0.15, 0.9)
        if "barrier" in chosen:
            for _ in range(int(rng.integers(1, 3))):
                put("barrier", side * rng.uniform(0.2, 0.9), 0.2, 0.95)
        if "sign" in chosen:
            put("sign", side * rng.uniform(1.1, 1.3), 0.25, 0.85)
        if "worker" in chosen:
            for _ in range(int(rng.integers(1, 4))):
                put("worker", side * rng.uniform(0.5, 1.2), 0.2, 0.9)
    car_colours: list[Color] = [(200, 200, 205), (30, 30, 35), (40, 70, 150), (150, 150, 150), (190, 30, 30)]
    for _, kind, x, y, s in sorted(props, key=lambda p: p[0]):
        if kind == "tree":
            _tree(d, rng, x, y, s, autumn)
        elif kind == "car":
            _car(d, rng, x, y, s, _jitter(rng, car_colours[rng.integers(len(car_colours))], 15))
        elif kind == "orange_car":
            _car(d, rng, x, y, s, _jitter(rng, (235, 120, 20), 15))
        elif kind == "stop":
            _stop_sign(d, x, y, s)
        elif kind == "cone":
            _cone(d, x, y, s)
        elif kind == "drum":
            _drum(d, x, y, s)
        elif kind == "barrier":
            _barrier(d, x, y, s, rng)
        elif kind == "sign":
            _roadwork_sign(d, x, y, s, rng)
        elif kind == "worker":
            _worker(d, x, y, s, rng)

    # Photographic finish: soft blur, exposure, sensor noise.
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.75, 1.15)
    arr += rng.normal(0.0, rng.uniform(2.0, 6.0), size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` in a seeded sequence (independent of drawing order)."""
    return np.random.default_rng([int(seed), int(index)])


def write_scene_folder(
    directory: str | Path,
    n: int,
    seed: int = 0,
    size: tuple[int, int] | int = DEFAULT_SIZE,
    quality: int = 92,
) -> dict[str, int]:
    """Write ``n`` drawn scenes per class into ``directory/roadwork`` and ``directory/no_roadwork``."""
    root = Path(directory)
    counts: dict[str, int] = {}
    for label, sub in CLASS_DIRS.items():
        out = root / sub
        out.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            idx = 2 * i + (1 if label else 0)
            draw_scene(scene_rng(seed, idx), label, size).save(
                out / f"scene_{seed}_{i:05d}.jpg", quality=quality
            )
        counts[sub] = n
    return counts


def scene_jpegs(n: int, size: int = 224, seed: int = 0, quality: int = 75) -> list[bytes]:
    """``n`` challenge-like JPEGs of drawn street scenes, every other one with road work."""
    return [encode_jpeg(draw_scene(scene_rng(seed, i), i % 2 == 0, size), quality) for i in range(n)]
