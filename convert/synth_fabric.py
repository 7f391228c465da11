"""Fabric textures for ``convert.synth``: a cached bank of periodic tiles plus per-image colours.

Why tiles: procedural weaves cost milliseconds per image; a periodic tile generated once per
process and mapped into any canvas with one ``cv2.warpAffine(..., BORDER_WRAP)`` (rotation,
scale, sub-pixel shift) costs well under a millisecond and works the same for a 256×256 still
and for any window of a long video strip. Each tile has two channels: ``shade`` (yarn relief,
~0.4..1.1, multiplied into the colour) and ``mask`` (0..1, which of two colours shows: weft vs
warp on denim, the print on printed cloth, the motif on jacquard). Colours are drawn per image,
so a few dozen tiles give thousands of distinct fabrics.

The bank is built from fixed seeds, independent of the data set seed, so ``--seed`` alone
decides every image.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import cache, lru_cache

import cv2
import numpy as np

#: px/mm the tiles are generated at (the default still-image scale: 2 mm = 25 px at 256 px).
BASE_PX_PER_MM = 12.5

KINDS = (
    "plain",
    "basket",
    "linen",
    "canvas",
    "twill",
    "denim",
    "satin",
    "knit",
    "rib",
    "fleece",
    "terry",
    "felt",
    "print",
    "jacquard",
    "check",
    "corduroy",
    "herringbone",
    "melange",
    "random",
)

#: Fabric families (public contract, see ``convert.synth.FAMILIES``) and the tile kinds in each.
FAMILY_KINDS = {
    "plain": ("plain", "basket", "linen", "canvas"),  # woven cotton, linen, basket, canvas
    "twill": ("twill", "denim"),
    "satin": ("satin",),
    "knit": ("knit", "rib"),  # single jersey and rib
    "fleece": ("fleece", "terry"),  # brushed pile and terry loops
    "felt": ("felt",),  # non-woven
    "print": ("print", "jacquard", "check"),  # prints, gingham, yarn-dyed checks, jacquard
}
FAMILIES = tuple(FAMILY_KINDS)
#: Held-back families: drawn only when named (``--families corduroy``), never by default, so the
#: shipped model has never seen them. They stand in for the real fabric a line brings on day one:
#: zero-shot and ``train --init`` figures on them are honest for any model trained on the default
#: draw (the README's "Fabrics the shipped model never saw").
HELD_BACK_KINDS = {
    "corduroy": ("corduroy",),  # wales of cut pile, 1-3 mm apart
    "herringbone": ("herringbone",),  # two-colour twill that turns every few yarns (tweed)
    "melange": ("melange",),  # heather jersey: a knit of two-colour fibres
}
HELD_BACK_FAMILIES = tuple(HELD_BACK_KINDS)
#: Domain randomisation (``synth --random-textures P``): textures of no real fabric, built from
#: the same parts at random (correlated noise of any grain, ribs of any period and sharpness, grids,
#: speckle in a second colour), so that a model learns the seam rather than our fabrics.
RANDOM_FAMILY = "random"
ALL_FAMILY_KINDS = {**FAMILY_KINDS, **HELD_BACK_KINDS, RANDOM_FAMILY: ("random",)}
FAMILY_OF = {k: f for f, ks in ALL_FAMILY_KINDS.items() for k in ks}


@dataclass(frozen=True)
class Tile:
    """One periodic texture: ``data`` is float32 [h, w, 2] = (shade, mask)."""

    kind: str
    data: np.ndarray
    two_tone: bool  # mask carries a second colour (denim weft, print, jacquard motif)
    sheen: float  # 0 matte .. 1 glossy (satin): strength of the specular band


# --------------------------------------------------------------------------- noise helpers


def periodic_noise(rng: np.random.Generator, h: int, w: int, sy: float, sx: float) -> np.ndarray:
    """Zero-mean unit-std Gaussian noise, periodic on h×w, correlated over ~(sy, sx) px."""
    white = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    filt = np.exp(-2.0 * (np.pi**2) * ((fy * sy) ** 2 + (fx * sx) ** 2))
    out = np.real(np.fft.ifft2(np.fft.fft2(white) * filt))
    out -= out.mean()
    return (out / max(out.std(), 1e-9)).astype(np.float32)


def _round_to(n: float, period: int) -> int:
    return max(period, int(round(n / period)) * period)


# --------------------------------------------------------------------------- weaves


def _weave(
    rng: np.random.Generator, pitch: int, kind: str, size: int = 256, relief: float = 0.45
) -> tuple[np.ndarray, np.ndarray]:
    """Woven structure → (shade, warp_on_top mask). Warp yarns run along y, weft along x."""
    repeat = {"plain": 2, "twill": 4, "twill3": 3, "satin": 5, "basket": 4}[kind]
    n = _round_to(size, pitch * repeat)
    yy, xx = np.mgrid[0:n, 0:n]
    i, j = xx // pitch, yy // pitch  # warp index (column), weft index (row)
    fx, fy = (xx % pitch + 0.5) / pitch, (yy % pitch + 0.5) / pitch
    hand = 1 if rng.random() < 0.5 else -1
    if kind == "plain":
        top = (i + j) % 2 == 0
    elif kind == "twill":
        top = (i + hand * j) % 4 < 2
    elif kind == "twill3":
        top = (i + hand * j) % 4 < 3  # 3/1 warp-faced (denim)
    elif kind == "satin":
        top = (2 * i + j) % 5 != 0  # 5-harness warp-faced satin
    else:  # basket 2/2
        top = ((i // 2) + (j // 2)) % 2 == 0
    warp_prof = np.sin(np.pi * fx) ** 0.6 * (0.9 + 0.1 * np.sin(np.pi * fy))
    weft_prof = np.sin(np.pi * fy) ** 0.6 * (0.9 + 0.1 * np.sin(np.pi * fx))
    # per-yarn brightness and slubs (irregular thickness along each yarn)
    warp_var = 1.0 + 0.06 * rng.standard_normal(n // pitch)[i]
    weft_var = 1.0 + 0.06 * rng.standard_normal(n // pitch)[j]
    slub_warp = periodic_noise(rng, n, n, pitch * 6, pitch * 0.6)
    slub_weft = periodic_noise(rng, n, n, pitch * 0.6, pitch * 6)
    warp = warp_prof * warp_var * (1 + 0.05 * slub_warp)
    weft = weft_prof * weft_var * (1 + 0.05 * slub_weft)
    prof = np.where(top, warp, weft)
    fuzz = periodic_noise(rng, n, n, 0.8, 0.8)
    shade = (1.0 - relief) + relief * prof + 0.035 * fuzz
    return shade.astype(np.float32), top.astype(np.float32)


def _knit(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Single jersey: columns of V-shaped loops (wales)."""
    pw = int(rng.integers(9, 15))
    pc = max(6, int(round(pw * rng.uniform(0.7, 0.9))))
    h, w = _round_to(256, pc), _round_to(256, pw)
    yy, xx = np.mgrid[0:h, 0:w]
    fx, fy = (xx % pw + 0.5) / pw, (yy % pc + 0.5) / pc
    cl, cr = 0.14 + 0.3 * fy, 0.86 - 0.3 * fy
    prof = np.maximum(np.exp(-(((fx - cl) / 0.17) ** 2)), np.exp(-(((fx - cr) / 0.17) ** 2)))
    prof *= 0.8 + 0.2 * np.sin(np.pi * fy)
    var = 1.0 + 0.05 * rng.standard_normal(w // pw)[xx // pw]
    fuzz = periodic_noise(rng, h, w, 0.8, 0.8)
    shade = 0.5 + 0.55 * prof * var + 0.03 * fuzz
    return shade.astype(np.float32), np.zeros((h, w), np.float32)


def _rib(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rib knit (1x1 / 2x2): raised knit wales alternating with sunken purl columns."""
    pw = int(rng.integers(7, 12))
    k = int(rng.integers(1, 3))
    pc = max(5, int(round(pw * rng.uniform(0.6, 0.8))))
    h, w = _round_to(256, pc), _round_to(256, pw * 2 * k)
    yy, xx = np.mgrid[0:h, 0:w]
    col = xx // pw
    raised = (col // k) % 2 == 0
    fx, fy = (xx % pw + 0.5) / pw, (yy % pc + 0.5) / pc
    cl, cr = 0.16 + 0.28 * fy, 0.84 - 0.28 * fy
    loop = np.maximum(np.exp(-(((fx - cl) / 0.18) ** 2)), np.exp(-(((fx - cr) / 0.18) ** 2)))
    prof = np.where(raised, 0.55 + 0.5 * loop, 0.35 + 0.2 * np.sin(np.pi * fy) * np.sin(np.pi * fx))
    fuzz = periodic_noise(rng, h, w, 0.8, 0.8)
    shade = 0.42 + 0.6 * prof + 0.03 * fuzz
    return shade.astype(np.float32), np.zeros((h, w), np.float32)


def _fleece(rng: np.random.Generator, terry: bool) -> tuple[np.ndarray, np.ndarray]:
    """Brushed fleece (soft fuzzy pile, low contrast) or terry (dense small loops)."""
    n = 256
    if terry:
        img: np.ndarray = np.zeros((n, n), np.float32)
        pitch = rng.uniform(4.5, 7.0)
        cnt = int((n / pitch) ** 2 * 1.3)
        pts = rng.uniform(0, n, (cnt, 2))
        for (x, y), r, a in zip(pts, rng.uniform(1.2, 2.6, cnt), rng.uniform(0, 180, cnt)):
            for dx in (-n, 0, n):
                for dy in (-n, 0, n):
                    cx, cy = x + dx, y + dy
                    if -6 < cx < n + 6 and -6 < cy < n + 6:
                        cv2.ellipse(img, ((float(cx), float(cy)), (2 * r, 2 * r * 1.4), float(a)), 1.0, 1, cv2.LINE_AA)
        img = np.pad(img, 6, mode="wrap")
        img = cv2.GaussianBlur(img, (0, 0), 0.6)[6:-6, 6:-6]
        shade = 0.55 + 0.45 * np.clip(img, 0, 1) + 0.06 * periodic_noise(rng, n, n, 3, 3)
    else:
        fine = periodic_noise(rng, n, n, 1.2, 1.2)
        mid = periodic_noise(rng, n, n, 3.5, 3.5)
        tufts = periodic_noise(rng, n, n, 9, 9)
        shade = 0.82 + 0.07 * fine + 0.07 * mid + 0.05 * tufts
    return shade.astype(np.float32), np.zeros((n, n), np.float32)


def _felt(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Non-woven felt: random short fibres over a mottled ground, no grid."""
    n = 256
    img = np.zeros((n + 32, n + 32), np.float32)
    cnt = 2600
    p = rng.uniform(0, n, (cnt, 2)) + 16
    ang = rng.uniform(0, np.pi, cnt)
    L = rng.uniform(3, 12, cnt)
    q = p + np.stack([np.cos(ang), np.sin(ang)], 1) * L[:, None]
    val = rng.uniform(0.3, 1.0, cnt)
    for a, b, v in zip(p, q, val):
        cv2.line(img, (int(a[0] * 16), int(a[1] * 16)), (int(b[0] * 16), int(b[1] * 16)), float(v), 1, cv2.LINE_AA, 4)
    core = img[16 : 16 + n, 16 : 16 + n].copy()
    # wrap the margins back in so the tile stays periodic
    core[:16] += img[n + 16 : n + 32, 16 : 16 + n]
    core[-16:] += img[:16, 16 : 16 + n]
    core[:, :16] += img[16 : 16 + n, n + 16 : n + 32]
    core[:, -16:] += img[16 : 16 + n, :16]
    core = core / max(float(np.percentile(core, 99)), 1e-6)
    mottle = periodic_noise(rng, n, n, 10, 10)
    shade = 0.72 + 0.12 * np.clip(core, 0, 1.5) + 0.06 * mottle + 0.03 * periodic_noise(rng, n, n, 0.8, 0.8)
    return shade.astype(np.float32), np.zeros((n, n), np.float32)


def _corduroy(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Corduroy: raised wales of cut pile along the warp with sunken grooves between them; the
    pile fibres streak along each wale."""
    pw = int(rng.integers(14, 34))  # wale pitch 1.1..2.7 mm at BASE_PX_PER_MM
    n = _round_to(256, pw)
    yy, xx = np.mgrid[0:n, 0:n]
    fx = (xx % pw + 0.5) / pw
    ridge = np.sin(np.pi * fx) ** rng.uniform(0.5, 1.2)
    var = 1.0 + 0.04 * rng.standard_normal(n // pw)[xx // pw]
    pile = periodic_noise(rng, n, n, 6.0, 0.7)
    fine = periodic_noise(rng, n, n, 0.8, 0.8)
    shade = 0.45 + 0.55 * ridge * var + 0.05 * pile + 0.03 * fine
    return shade.astype(np.float32), np.zeros((n, n), np.float32)


def _herringbone(rng: np.random.Generator, pitch: int) -> tuple[np.ndarray, np.ndarray]:
    """Herringbone: a 2/2 twill whose diagonal turns every ``band`` warp yarns → (shade, warp
    mask); warp and weft are dyed apart, as in tweed."""
    band = int(rng.choice([4, 6, 8]))
    n = _round_to(256, pitch * 2 * band)
    yy, xx = np.mgrid[0:n, 0:n]
    i, j = xx // pitch, yy // pitch
    fx, fy = (xx % pitch + 0.5) / pitch, (yy % pitch + 0.5) / pitch
    hand = np.where((i // band) % 2 == 0, 1, -1)
    top = (i + hand * j) % 4 < 2
    warp = np.sin(np.pi * fx) ** 0.6 * (1.0 + 0.06 * rng.standard_normal(n // pitch)[i])
    weft = np.sin(np.pi * fy) ** 0.6 * (1.0 + 0.06 * rng.standard_normal(n // pitch)[j])
    fuzz = periodic_noise(rng, n, n, 0.8, 0.8)
    shade = 0.55 + 0.45 * np.where(top, warp, weft) + 0.04 * fuzz
    return shade.astype(np.float32), top.astype(np.float32)


def _melange(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Heather (mélange) jersey: the knit's loops, spun from fibres of two colours → (shade,
    mask of the second colour's fibres, short streaks along the wales)."""
    shade, _ = _knit(rng)
    h, w = shade.shape
    streaks = periodic_noise(rng, h, w, 2.5, 0.6)
    mask = np.clip((streaks - rng.uniform(0.6, 1.1)) * 2.0, 0, 1)
    return shade, mask.astype(np.float32)


def _random_texture(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A periodic texture of no real weave: one to three layers of correlated noise (any grain),
    ribs (any period, angle and sharpness) or grids, and half the time a second colour in speckles
    or blotches → (shade, mask)."""
    n = 256
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)

    def ribs() -> np.ndarray:
        k = int(rng.integers(4, 48))
        kx, ky = [(k, 0), (0, k), (k, k), (k, -k)][int(rng.integers(0, 4))]
        c = np.sin(2 * np.pi * (kx * xx + ky * yy) / n + rng.uniform(0, 6.3))
        return np.sign(c) * np.abs(c) ** rng.uniform(0.3, 3.0)

    layers = np.zeros((n, n), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        u = rng.random()
        if u < 0.45:
            sy, sx = np.exp(rng.uniform(np.log(0.6), np.log(24.0), 2))
            c = periodic_noise(rng, n, n, float(sy), float(sx))
        elif u < 0.8:
            c = ribs()
        else:
            c = ribs() * ribs()
        layers += rng.uniform(0.3, 1.0) * c / max(float(c.std()), 1e-6)
    layers /= max(float(layers.std()), 1e-6)
    shade = np.clip(0.78 + rng.uniform(0.04, 0.16) * layers, 0.3, 1.2)
    mask = np.zeros((n, n), np.float32)
    if rng.random() < 0.5:
        sy, sx = np.exp(rng.uniform(np.log(0.6), np.log(16.0), 2))
        z = periodic_noise(rng, n, n, float(sy), float(sx))
        mask = np.clip((z - rng.uniform(0.5, 1.6)) * rng.uniform(1.5, 6.0), 0, 1)
    return shade.astype(np.float32), mask.astype(np.float32)


def _check_mask(rng: np.random.Generator, n: int) -> np.ndarray:
    """Yarn-dyed check/plaid: bands of the second colour in both directions (0, 0.5, 1)."""
    k = int(rng.integers(2, 6))
    p = n // k
    width = rng.uniform(0.15, 0.5) * p
    x = np.arange(n) % p
    band = (x < width).astype(np.float32)
    if rng.random() < 0.5:  # plaid: a thin second stripe
        off = int(p * rng.uniform(0.55, 0.8))
        band = np.maximum(band, ((x >= off) & (x < off + max(2, p * 0.06))).astype(np.float32))
    m = (band[None, :] + band[:, None]) / 2.0
    return m.astype(np.float32)


def _print_mask(rng: np.random.Generator, n: int, style: str) -> np.ndarray:
    """Periodic print/motif mask on an n×n grid (0..1), edges slightly soft."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    if style == "stripes":
        k = int(rng.integers(2, 8))
        kx, ky = [(0, k), (k, 0), (k, k), (k, -k)][int(rng.integers(0, 4))]
        s = np.sin(2 * np.pi * (kx * xx + ky * yy) / n + rng.uniform(0, 6.28))
        m = (s > rng.uniform(-0.5, 0.6)).astype(np.float32)
    elif style == "dots":
        k = int(rng.integers(3, 8))
        p = n / k
        dx = (xx % p) - p / 2
        dy = ((yy + (xx // p % 2) * p / 2) % p) - p / 2
        m = (np.hypot(dx, dy) < p * rng.uniform(0.15, 0.32)).astype(np.float32)
    elif style == "gingham":
        k = int(rng.integers(3, 9))
        p = n / k
        m = (((xx % p) < p / 2).astype(np.float32) + ((yy % p) < p / 2)) / 2.0
    elif style == "diamonds":
        k = int(rng.integers(3, 7))
        p = n / k
        dx, dy = np.abs((xx % p) - p / 2), np.abs((yy % p) - p / 2)
        m = ((dx + dy) < p * rng.uniform(0.2, 0.45)).astype(np.float32)
    elif style == "camo":
        z = periodic_noise(rng, n, n, rng.uniform(8, 18), rng.uniform(8, 18))
        m = np.digitize(z, [-0.4, 0.5]).astype(np.float32) / 2.0
    else:  # "floral": blobs with small satellites
        z = periodic_noise(rng, n, n, 9, 9) + 0.5 * periodic_noise(rng, n, n, 3, 3)
        m = (z > rng.uniform(0.6, 1.1)).astype(np.float32)
    pad = np.pad(m, 4, mode="wrap")
    return cv2.GaussianBlur(pad, (0, 0), 0.7)[4:-4, 4:-4]


@lru_cache(maxsize=1)
def tile_bank() -> tuple[Tile, ...]:
    """All tiles, built once per process from fixed seeds (~0.3 s)."""
    tiles: list[Tile] = []
    seq = np.random.SeedSequence(20240611)
    rngs = iter(np.random.default_rng(s) for s in seq.spawn(96))

    for pitch in (4, 5, 6, 8):
        s, m = _weave(next(rngs), pitch, "plain")
        tiles.append(Tile("plain", np.dstack([s, m]), False, 0.15))
    for pitch in (3, 4, 5, 6):
        s, m = _weave(next(rngs), pitch, "twill")
        tiles.append(Tile("twill", np.dstack([s, m]), False, 0.15))
    for pitch in (4, 5, 6):
        r = next(rngs)
        s, m = _weave(r, pitch, "twill3", relief=0.5)
        # denim: strong warp-yarn streaks (ring-spun slub) and faded patches
        n = s.shape[0]
        streak = periodic_noise(r, n, n, 40, 1.5)
        fade = periodic_noise(r, n, n, 30, 30)
        s = s * (1 + 0.08 * streak) * (1 + 0.05 * fade)
        # the white weft peeks through between indigo floats: soft, partial flecks along the wale
        wrapped = np.pad(1.0 - m, 4, mode="wrap")
        weft = cv2.GaussianBlur(wrapped, (0, 0), 0.6 * pitch / 4)[4:-4, 4:-4] * r.uniform(0.45, 0.7)
        tiles.append(Tile("denim", np.dstack([s, weft.astype(np.float32)]), True, 0.05))
    for pitch in (3, 4):
        s, m = _weave(next(rngs), pitch, "satin", relief=0.18)
        tiles.append(Tile("satin", np.dstack([s, np.zeros_like(m)]), False, 0.9))
    s, m = _weave(next(rngs), 4, "basket")
    tiles.append(Tile("basket", np.dstack([s, m * 0]), False, 0.1))
    for _ in range(3):
        s, m = _knit(next(rngs))
        tiles.append(Tile("knit", np.dstack([s, m]), False, 0.1))
    for pitch in (5, 7):  # linen: coarse, strongly slubbed plain weave
        r = next(rngs)
        s, m = _weave(r, pitch, "plain", relief=0.4)
        n = s.shape[0]
        slub = periodic_noise(r, n, n, 2, 30) * 0.09 + periodic_noise(r, n, n, 30, 2) * 0.09
        tiles.append(Tile("linen", np.dstack([s * (1 + slub), m * 0]), False, 0.1))
    for pitch in (8, 10):  # canvas / duck: thick yarns
        s, m = _weave(next(rngs), pitch, "plain", relief=0.55)
        tiles.append(Tile("canvas", np.dstack([s, m * 0]), False, 0.05))
    for _ in range(3):
        s, m = _rib(next(rngs))
        tiles.append(Tile("rib", np.dstack([s, m]), False, 0.1))
    for terry in (False, False, True, True):
        s, m = _fleece(next(rngs), terry)
        tiles.append(Tile("terry" if terry else "fleece", np.dstack([s, m]), False, 0.02))
    for _ in range(3):
        s, m = _felt(next(rngs))
        tiles.append(Tile("felt", np.dstack([s, m]), False, 0.02))
    for tw in ("plain", "twill", "plain"):
        r = next(rngs)
        s, _ = _weave(r, 4, tw, relief=0.35)
        tiles.append(Tile("check", np.dstack([s, _check_mask(r, s.shape[0])]), True, 0.1))
    for style in ("stripes", "dots", "gingham", "diamonds", "camo", "floral", "stripes", "dots"):
        r = next(rngs)
        s, _ = _weave(r, 4, "plain", relief=0.25)
        tiles.append(Tile("print", np.dstack([s, _print_mask(r, s.shape[0], style)]), True, 0.1))
    for style in ("diamonds", "floral", "stripes"):
        r = next(rngs)
        a, _ = _weave(r, 4, "twill", relief=0.3)
        b, _ = _weave(r, 4, "plain", relief=0.12)
        motif = _print_mask(r, a.shape[0], style)
        s = a * (1 - motif) + (b * 1.08) * motif
        tiles.append(Tile("jacquard", np.dstack([s, motif]), True, 0.35))
    # held-back families (HELD_BACK_KINDS) come last, so every tile above keeps its index and pixels
    for _ in range(2):
        s, m = _corduroy(next(rngs))
        tiles.append(Tile("corduroy", np.dstack([s, m]), False, 0.3))
    for pitch in (3, 4):
        s, m = _herringbone(next(rngs), pitch)
        tiles.append(Tile("herringbone", np.dstack([s, m]), True, 0.05))
    for _ in range(2):
        s, m = _melange(next(rngs))
        tiles.append(Tile("melange", np.dstack([s, m]), True, 0.05))
    for r in (np.random.default_rng(s) for s in np.random.SeedSequence(20261206).spawn(24)):
        s, m = _random_texture(r)
        tiles.append(Tile("random", np.dstack([s, m]), bool(m.any()), float(r.uniform(0.0, 0.4))))
    return tuple(tiles)


# --------------------------------------------------------------------------- colours


def hsv_bgr(h: float, s: float, v: float) -> np.ndarray:
    """HSV (0..1 each) → BGR float32 0..1."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.array([b, g, r], np.float32)


def luma(bgr: np.ndarray) -> float:
    """Rec. 601 luma of a BGR 0..1 colour."""
    return float(0.114 * bgr[0] + 0.587 * bgr[1] + 0.299 * bgr[2])


def fabric_colours(rng: np.random.Generator, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """Main and second colour for a tile (second = weft/print/motif colour)."""
    if tile.kind == "denim":
        c0 = hsv_bgr(rng.uniform(0.58, 0.64), rng.uniform(0.45, 0.85), rng.uniform(0.22, 0.6))
        if rng.random() < 0.15:  # black denim
            c0 = hsv_bgr(0.6, 0.1, rng.uniform(0.1, 0.25))
        c1 = hsv_bgr(rng.uniform(0.08, 0.15), rng.uniform(0.02, 0.15), rng.uniform(0.7, 0.92))
        return c0, c1
    u = rng.random()
    if u < 0.3:  # neutrals: black, greys, white, beige
        c0 = hsv_bgr(rng.uniform(0, 1), rng.uniform(0, 0.12), rng.uniform(0.08, 0.95))
    elif u < 0.65:  # muted colours: khaki, navy, olive, burgundy
        c0 = hsv_bgr(rng.uniform(0, 1), rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.8))
    else:  # saturated
        c0 = hsv_bgr(rng.uniform(0, 1), rng.uniform(0.55, 1.0), rng.uniform(0.35, 0.95))
    if tile.kind in ("herringbone", "melange"):  # tweed / heather: the second colour near the first
        h, s, v = colorsys.rgb_to_hsv(*c0[::-1])
        lo, hi = (0.15, 0.35) if tile.kind == "herringbone" else (0.25, 0.5)
        c1 = hsv_bgr(
            h + rng.uniform(-0.05, 0.05), s * rng.uniform(0.2, 0.8), v + rng.choice([-1, 1]) * rng.uniform(lo, hi)
        )
        return c0, c1
    if tile.kind == "jacquard" and rng.random() < 0.6:
        h, s, v = colorsys.rgb_to_hsv(*c0[::-1])
        c1 = hsv_bgr(h, s, v + rng.choice([-1, 1]) * rng.uniform(0.1, 0.2))
    elif tile.two_tone:
        c1 = hsv_bgr(rng.uniform(0, 1), rng.uniform(0, 0.9), rng.uniform(0.15, 0.95))
    else:
        c1 = c0
    return c0, c1


def contrast(thread: np.ndarray, refs: list[np.ndarray]) -> float:
    """Thread/fabric contrast: the smallest Rec. 601 luma difference to any reference colour (0..1)."""
    return float(min(abs(luma(thread) - luma(r)) for r in refs))


TONE_SHARE = 0.35  # threads dyed to match the fabric: only slightly lighter/darker or hue-shifted
CLOSE_SHARE = 0.2  # tone-on-tone but clearly lighter/darker (luma difference 0.15..0.3)


def thread_colour(rng: np.random.Generator, refs: list[np.ndarray], mode: str) -> np.ndarray:
    """A thread colour against the fabric ``refs`` (the mean colour, or both colours of a print).

    ``mode``: ``"tone"`` — matched to the fabric, differing only slightly in lightness (luma
    difference 0.01..0.12) and hue, as on real garments where the stitches read by their relief
    and shadows rather than their colour; ``"close"`` — same hue, luma difference 0.15..0.3;
    ``"contrast"`` — a contrasting colour (≥ 0.3 in luma, or ≥ 0.15 in luma and ≥ 0.5 in a channel).
    """
    ls = [luma(r) for r in refs]
    lo, hi = min(ls), max(ls)
    h, s, v = colorsys.rgb_to_hsv(*refs[0][::-1])
    if mode == "tone":
        want = rng.uniform(0.01, 0.12)
        lighter = (hi + want <= 0.95) and (lo - want < 0.03 or rng.random() < 0.5)
        base = hsv_bgr(h + rng.uniform(-0.03, 0.03), s * rng.uniform(0.8, 1.2), v)
        target = np.ones(3, np.float32) if lighter else np.zeros(3, np.float32)
        for t in np.linspace(0.0, 1.0, 51):
            cc = base * (1 - t) + target * t
            if min(abs(luma(cc) - x) for x in ls) >= want:
                return cc.astype(np.float32)
        return base
    want = rng.uniform(0.15, 0.3)
    if mode == "close" and (hi + want <= 0.92 or lo - want >= 0.06):
        can_l, can_d = hi + want <= 0.92, lo - want >= 0.06
        lighter = can_l if not (can_l and can_d) else (lo < 0.3 or (hi <= 0.7 and bool(rng.random() < 0.5)))
        c = hsv_bgr(
            h + rng.uniform(-0.04, 0.04), s * rng.uniform(0.6, 1.1), v + (1 if lighter else -1) * rng.uniform(0.15, 0.4)
        )
        target = np.ones(3, np.float32) if lighter else np.zeros(3, np.float32)
        for t in np.linspace(0.0, 1.0, 41):  # blend toward white/black until it shows
            cc = c * (1 - t) + target * t
            if min(abs(luma(cc) - x) for x in ls) >= want:
                return cc.astype(np.float32)

    def stands_out(c: np.ndarray) -> bool:
        return all(
            abs(luma(c) - lr) >= 0.3 or (abs(luma(c) - lr) >= 0.15 and np.abs(c - r).max() >= 0.5)
            for r, lr in zip(refs, ls)
        )

    for _ in range(60):
        u = rng.random()
        if u < 0.3:
            c = hsv_bgr(0, 0, rng.uniform(0.85, 0.97)) if lo < 0.55 else hsv_bgr(0, 0, rng.uniform(0.05, 0.2))
        elif u < 0.5:  # gold / orange topstitch
            c = hsv_bgr(rng.uniform(0.07, 0.13), rng.uniform(0.55, 0.9), rng.uniform(0.7, 0.95))
        else:
            c = hsv_bgr(rng.uniform(0, 1), rng.uniform(0.3, 1), rng.uniform(0.2, 0.97))
        if stands_out(c):
            return c
    white, black = hsv_bgr(0, 0, 0.95), hsv_bgr(0, 0, 0.06)
    return white if min(abs(0.95 - x) for x in ls) >= min(abs(0.06 - x) for x in ls) else black


# --------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class FabricLook:
    """A tile plus how it is laid on the canvas (grain angle, scale, offset) and coloured."""

    tile_index: int
    angle: float  # radians, grain vs seam
    scale: float  # tile px per canvas px
    offset: tuple[float, float]
    c0: np.ndarray
    c1: np.ndarray
    texture: float = 1.0  # relief contrast (1 = the tile's own)


def family_tiles(family: str) -> list[int]:
    """Indices of the bank's tiles in a family."""
    return [i for i, t in enumerate(tile_bank()) if FAMILY_OF[t.kind] == family]


def random_look(rng: np.random.Generator, px_per_mm: float, families=None, seam_angle: float = 0.0) -> FabricLook:
    """Pick a family (uniformly among ``families``, default ``FAMILIES``; the held-back ones only
    when named), then a look in it: kind, tile,
    grain orientation (relative to the seam at ``seam_angle``), yarn-size jitter and colours."""
    bank = tile_bank()
    fams = list(families) if families else list(FAMILIES)
    fam = fams[int(rng.integers(0, len(fams)))]
    kinds = ALL_FAMILY_KINDS[fam]
    kind = kinds[int(rng.integers(0, len(kinds)))]
    cand = [i for i, t in enumerate(bank) if t.kind == kind]
    idx = cand[int(rng.integers(0, len(cand)))]
    tile = bank[idx]
    u = rng.random()
    base = 0.0 if u < 0.45 else (np.pi / 2 if u < 0.9 else np.pi / 4)
    angle = base + rng.normal(0, 0.04) + (seam_angle if rng.random() < 0.8 else rng.uniform(-0.3, 0.3))
    scale = BASE_PX_PER_MM / px_per_mm / rng.uniform(0.75, 1.35)
    off = (float(rng.uniform(0, 4096)), float(rng.uniform(0, 4096)))
    c0, c1 = fabric_colours(rng, tile)
    texture = rng.uniform(0.35, 1.1)
    return FabricLook(idx, float(angle), float(scale), off, c0, c1, float(texture))


def render_fabric(look: FabricLook, x0: float, y0: float, w: int, h: int) -> np.ndarray:
    """Fabric BGR float32 [h, w, 3] for the canvas window starting at (x0, y0)."""
    tile = tile_bank()[look.tile_index]
    ca, sa = np.cos(look.angle) * look.scale, np.sin(look.angle) * look.scale
    # dst (x, y) → src = A @ (x + x0, y + y0) + offset   (WARP_INVERSE_MAP)
    tx = ca * x0 - sa * y0 + look.offset[0]
    ty = sa * x0 + ca * y0 + look.offset[1]
    m = np.array([[ca, -sa, tx], [sa, ca, ty]], np.float32)
    sm = cv2.warpAffine(tile.data, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_WRAP)
    shade, mask = sm[..., 0], sm[..., 1]
    if look.texture != 1.0:
        mean = _tile_mean(look.tile_index)
        shade = (shade - mean) * look.texture + mean
    out = shade[..., None] * look.c0
    if tile.two_tone:
        out += (shade * mask)[..., None] * (look.c1 - look.c0)
    return out


@cache
def _tile_mean(index: int) -> float:
    return float(tile_bank()[index].data[..., 0].mean())


def reference_colours(look: FabricLook) -> list[np.ndarray]:
    """Colours a thread must stand out from: the mean for fine two-tone weaves (denim reads
    as one colour at camera scale), each colour for prints and jacquards (large patches)."""
    tile = tile_bank()[look.tile_index]
    if tile.kind in ("print", "jacquard", "check"):
        s = _tile_mean(look.tile_index)
        return [look.c0 * s, look.c1 * s]
    return [mean_colour(look)]


def mean_colour(look: FabricLook) -> np.ndarray:
    """Approximate mean fabric colour (for choosing a thread colour against it)."""
    tile = tile_bank()[look.tile_index]
    s = float(tile.data[..., 0].mean())
    if not tile.two_tone:
        return look.c0 * s
    mfrac = float(tile.data[..., 1].mean())
    return (look.c0 * (1 - mfrac) + look.c1 * mfrac) * s
