"""Procedurally drawn fine-grained image classes for the demo and tests.

Every class is a small perching bird with the same overall look (a brown body, a head with an eye
and a beak, a tail, a wing, legs on a branch). Classes differ only in three details: the wing
colour, the pattern on the body (plain, stripes, spots or chevrons) and the build of the body
(the aspect of its ellipse). Within a class every image varies in position, scale, a small
rotation, mirroring, the background, the lighting and pixel noise, so that telling classes apart
needs attention to the details rather than to the whole picture.

Pillow, numpy and the standard library only: no torch here.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

RGB = tuple[int, int, int]
Point = tuple[float, float]

WING_COLOURS: dict[str, RGB] = {
    "crimson": (196, 32, 48),
    "azure": (42, 112, 214),
    "golden": (228, 182, 34),
    "emerald": (28, 150, 84),
    "violet": (128, 62, 176),
    "tangerine": (240, 118, 28),
}
PATTERNS: tuple[str, ...] = ("plain", "striped", "spotted", "chevroned")
BUILDS: dict[str, float] = {"slender": 0.46, "plump": 0.62, "round": 0.78}

N_SPECIES = len(WING_COLOURS) * len(PATTERNS) * len(BUILDS)
JPEG_QUALITY = 90
MIN_SIZE = 32
_SUPERSAMPLE = 3
_BODY_RGB = (150, 112, 78)
_BACKGROUNDS: tuple[tuple[RGB, RGB], ...] = (
    ((168, 205, 236), (226, 238, 246)),  # sky
    ((120, 160, 104), (186, 210, 150)),  # foliage
    ((214, 200, 170), (238, 230, 212)),  # sand
    ((150, 156, 164), (206, 210, 214)),  # overcast
    ((96, 128, 112), (160, 176, 150)),  # shade
)


@dataclass(frozen=True)
class SpeciesSpec:
    """One fine-grained class: a fixed combination of wing colour, body pattern and body build."""

    name: str
    wing_colour: str
    pattern: str
    build: str

    @property
    def wing_rgb(self) -> RGB:
        return WING_COLOURS[self.wing_colour]

    @property
    def aspect(self) -> float:
        """Body height over body width."""
        return BUILDS[self.build]


def _all_species(seed: int) -> list[SpeciesSpec]:
    combos = list(itertools.product(WING_COLOURS, PATTERNS, BUILDS))
    order = np.random.default_rng([seed, 0x5EC1E5]).permutation(len(combos))
    return [
        SpeciesSpec(name=f"{c}_{p}_{b}", wing_colour=c, pattern=p, build=b)
        for c, p, b in (combos[i] for i in order)
    ]


def species(n_classes: int, seed: int = 0) -> list[SpeciesSpec]:
    """The first ``n_classes`` classes of the order fixed by ``seed`` (all distinct).

    Class ``i`` is the same for every ``n_classes``, so a longer list extends a shorter one.
    Raises ValueError unless 1 <= n_classes <= N_SPECIES.
    """
    if not 1 <= n_classes <= N_SPECIES:
        raise ValueError(
            f"n_classes={n_classes}: there are {N_SPECIES} species "
            f"({len(WING_COLOURS)} wing colours x {len(PATTERNS)} patterns x {len(BUILDS)} builds)"
        )
    return _all_species(seed)[:n_classes]


def _jitter(rgb: RGB, rng: np.random.Generator, amount: float) -> RGB:
    scale = rng.uniform(1 - amount, 1 + amount)
    shift = rng.normal(0, 255 * amount / 3, 3)
    r, g, b = (int(np.clip(v * scale + s, 0, 255)) for v, s in zip(rgb, shift, strict=True))
    return (r, g, b)


def _shade(rgb: RGB, factor: float) -> RGB:
    r, g, b = (int(np.clip(v * factor, 0, 255)) for v in rgb)
    return (r, g, b)


def _rotated(points: list[Point], centre: Point, angle_deg: float) -> list[Point]:
    cx, cy = centre
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _ellipse_points(centre: Point, radii: Point, angle_deg: float, n: int = 48) -> list[Point]:
    cx, cy = centre
    rx, ry = radii
    ts = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return _rotated([(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in ts], centre, angle_deg)


def _background(rng: np.random.Generator, side: int) -> Image.Image:
    lo, hi = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    lo, hi = _jitter(lo, rng, 0.12), _jitter(hi, rng, 0.12)
    if rng.random() < 0.5:
        lo, hi = hi, lo
    t = np.linspace(0, 1, side, dtype=np.float32)[:, None, None]
    grad = np.asarray(lo, np.float32) * (1 - t) + np.asarray(hi, np.float32) * t
    img = Image.fromarray(np.broadcast_to(grad, (side, side, 3)).astype(np.uint8))
    blobs = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(blobs)
    for _ in range(int(rng.integers(3, 9))):
        x, y = rng.uniform(0, side, 2)
        r = rng.uniform(0.05, 0.2) * side
        colour = _jitter(lo if rng.random() < 0.5 else hi, rng, 0.25)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(*colour, int(rng.integers(60, 150))))
    blobs = blobs.filter(ImageFilter.GaussianBlur(side * 0.04))
    return Image.alpha_composite(img.convert("RGBA"), blobs)


def _pattern_layer(
    spec: SpeciesSpec,
    rng: np.random.Generator,
    side: int,
    box: tuple[float, float, float, float],
    u: float,
    colour: RGB,
) -> Image.Image:
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    x0, y0, x1, y1 = box
    fill = (*colour, 230)
    if spec.pattern == "striped":
        gap = u * rng.uniform(6.0, 7.5)
        slant = u * rng.uniform(-3, 3)
        x = x0 + rng.uniform(0, gap)
        while x < x1:
            draw.line([(x + slant, y0), (x - slant, y1)], fill=fill, width=max(1, round(2.6 * u)))
            x += gap
    elif spec.pattern == "spotted":
        area = (x1 - x0) * (y1 - y0)
        for _ in range(int(area / (u * u * rng.uniform(28, 40)))):
            cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            r = u * rng.uniform(1.3, 2.3)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif spec.pattern == "chevroned":
        # rows of V marks across the body, like the scalloped breast of a thrush
        gap = u * rng.uniform(6.0, 7.5)
        tooth = u * rng.uniform(5.0, 6.5)
        y = y0 + rng.uniform(0, gap)
        while y < y1 + tooth:
            x = x0 - rng.uniform(0, 2 * tooth)
            zigzag = []
            while x < x1 + 2 * tooth:
                zigzag += [(x, y - tooth * 0.55), (x + tooth, y + tooth * 0.55)]
                x += 2 * tooth
            draw.line(zigzag, fill=fill, width=max(1, round(1.8 * u)), joint="curve")
            y += gap
    return layer


def _bird(spec: SpeciesSpec, rng: np.random.Generator, side: int, u: float) -> Image.Image:
    """The bird on its branch, facing right, centred in a transparent ``side`` square.

    ``u`` is the drawing unit: one hundredth of the bird's nominal frame.
    """
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    pattern_rng = np.random.default_rng(rng.integers(2**63))
    cx, cy = side / 2, side / 2 - 4 * u
    body = _jitter(_BODY_RGB, rng, 0.08)
    dark, light = _shade(body, 0.55), _shade(body, 1.35)
    wing = _jitter(spec.wing_rgb, rng, 0.06)
    aspect = spec.aspect * rng.uniform(0.95, 1.05)
    bw = 46 * u
    bh = bw * aspect
    outline = max(1, round(0.8 * u))

    perch_y = cy + bh * 0.5 + 9 * u
    branch = _jitter((104, 72, 44), rng, 0.1)
    draw.line(
        [(0, perch_y + 2 * u), (side, perch_y - 2 * u)], fill=branch, width=max(1, round(4 * u))
    )
    for dx in (-bw * 0.08, bw * 0.08):
        foot_x = cx + dx + 2 * u
        draw.line(
            [(cx + dx, cy + bh * 0.4), (foot_x, perch_y)], fill=dark, width=max(1, round(1.4 * u))
        )
        draw.line(
            [(foot_x - 2.5 * u, perch_y), (foot_x + 3 * u, perch_y)],
            fill=dark,
            width=max(1, round(u)),
        )

    tail_root = (cx - bw * 0.38, cy - bh * 0.05)
    tail_len = rng.uniform(18, 24) * u
    tail_lift = rng.uniform(-4, 6) * u
    tail = [
        (tail_root[0], tail_root[1] - bh * 0.18),
        (tail_root[0] - tail_len, tail_root[1] - tail_lift - 5 * u),
        (tail_root[0] - tail_len - 2 * u, tail_root[1] - tail_lift + 2 * u),
        (tail_root[0], tail_root[1] + bh * 0.22),
    ]
    draw.polygon(tail, fill=dark, outline=_shade(dark, 0.7))

    body_box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
    draw.ellipse(body_box, fill=body)
    body_mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(body_mask).ellipse(body_box, fill=255)
    belly = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    ImageDraw.Draw(belly).ellipse(
        (cx - bw * 0.25, cy, cx + bw * 0.6, cy + bh * 0.9), fill=(*light, 200)
    )
    pattern = _pattern_layer(spec, pattern_rng, side, body_box, u, _shade(body, 0.42))
    for part in (belly, pattern):
        part.putalpha(ImageChops.multiply(part.getchannel("A"), body_mask))
        layer.alpha_composite(part)
    draw = ImageDraw.Draw(layer)
    draw.ellipse(body_box, outline=_shade(body, 0.6), width=outline)

    r = 10.5 * u * rng.uniform(0.95, 1.05)
    hx, hy = cx + bw * 0.42, cy - bh * 0.42 - r * 0.25
    beak_colour = _jitter((232, 170, 60), rng, 0.08)
    beak_len = rng.uniform(8, 11) * u
    draw.polygon(
        [
            (hx + r * 0.7, hy - r * 0.32),
            (hx + r + beak_len, hy + r * 0.05),
            (hx + r * 0.7, hy + r * 0.32),
        ],
        fill=beak_colour,
        outline=_shade(beak_colour, 0.6),
    )
    draw.ellipse(
        (hx - r, hy - r, hx + r, hy + r), fill=body, outline=_shade(body, 0.6), width=outline
    )
    ex, ey, er = hx + r * 0.38, hy - r * 0.22, r * 0.24
    draw.ellipse((ex - er, ey - er, ex + er, ey + er), fill=(245, 245, 240))
    pr = er * 0.6
    draw.ellipse((ex - pr + er * 0.2, ey - pr, ex + pr + er * 0.2, ey + pr), fill=(20, 16, 14))

    wing_angle = rng.uniform(-14, -4)
    wing_c = (cx - bw * 0.06, cy - bh * 0.06)
    wing_r = (bw * 0.33, bh * 0.3)
    draw.polygon(_ellipse_points(wing_c, wing_r, wing_angle), fill=wing, outline=_shade(wing, 0.55))
    for k in (-0.35, 0.0, 0.35):
        # feather lines: from the wing's front towards its back edge
        feather = [
            (wing_c[0] + wing_r[0] * 0.1, wing_c[1] + k * wing_r[1]),
            (wing_c[0] - wing_r[0] * 0.85, wing_c[1] + k * wing_r[1] * 0.6),
        ]
        draw.line(
            _rotated(feather, wing_c, wing_angle),
            fill=_shade(wing, 0.7),
            width=max(1, round(0.9 * u)),
        )
    return layer


def draw(spec: SpeciesSpec, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """One RGB ``size`` x ``size`` picture of ``spec``; every draw from ``rng`` makes it differ."""
    if size < MIN_SIZE:
        raise ValueError(f"size={size}: images must be at least {MIN_SIZE} pixels a side")
    side = size * _SUPERSAMPLE
    # The scene is drawn before the bird, and the bird from its own generator, so two species
    # drawn from equally seeded generators share the pose, the background and the lighting.
    canvas = _background(rng, side)
    scale = rng.uniform(0.8, 1.1)
    flip = rng.random() < 0.5
    shift = rng.uniform(-0.12, 0.12, 2) * side
    angle = float(rng.uniform(-15, 15))
    light = rng.uniform(0.8, 1.15) * rng.uniform(0.95, 1.05, 3)
    noise = rng.normal(0, rng.uniform(2, 7), (size, size, 3))
    bird_rng = np.random.default_rng(rng.integers(2**63))
    big = side * 8 // 5  # room for the branch to reach the edges after a shift and a turn
    bird = _bird(spec, bird_rng, big, u=side * scale / 100)
    if flip:
        bird = bird.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    bird = bird.rotate(angle, resample=Image.Resampling.BILINEAR)
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    layer.paste(bird, (round((side - big) / 2 + shift[0]), round((side - big) / 2 + shift[1])))
    img = Image.alpha_composite(canvas, layer).convert("RGB")
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(img, np.float32) * light + noise
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "RGB")


def make_gallery(
    out_dir: str | os.PathLike[str],
    n_classes: int = 8,
    per_class: int = 12,
    *,
    seed: int = 0,
    size: int = 128,
    start: int = 0,
) -> dict[str, list[Path]]:
    """Write ``out_dir/<class name>/<NNN>.jpg`` (JPEG quality 90) and return ``{label: paths}``.

    The classes are ``species(start + n_classes, seed)[start:]``: galleries made with the same
    seed and non-overlapping ``start`` ranges share no class (a new species to enrol, say).
    The same arguments always write the same bytes.
    """
    if start < 0:
        raise ValueError(f"start={start} must not be negative")
    if per_class < 1:
        raise ValueError(f"per_class={per_class} must be at least 1")
    if n_classes < 1:
        raise ValueError(f"n_classes={n_classes} must be at least 1")
    specs = species(start + n_classes, seed)[start:]
    root = Path(out_dir)
    out: dict[str, list[Path]] = {}
    for index, spec in enumerate(specs, start=start):
        folder = root / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for j in range(per_class):
            rng = np.random.default_rng([seed, index, j])
            path = folder / f"{j:03d}.jpg"
            draw(spec, rng, size).save(path, "JPEG", quality=JPEG_QUALITY)
            paths.append(path)
        out[spec.name] = paths
    return out
