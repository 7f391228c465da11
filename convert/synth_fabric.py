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
from functools import lru_cache

import cv2
import numpy as np

#: px/mm the tiles are generated at (the default still-image scale: 2 mm = 25 px at 256 px).
BASE_PX_PER_MM = 12.5

KINDS = ("plain", "twill", "denim", "satin", "basket", "knit", "print", "jacquard")


@dataclass(frozen=True)
class Tile:
    """One periodic texture: ``data`` is float32 [h, w, 2] = (shade, mask)."""

    kind: str
    data: np.ndarray
    two_tone: bool   # mask carries a second colour (denim weft, print, jacquard motif)
    sheen: float     # 0 matte .. 1 glossy (satin): strength of the specular band


# --------------------------------------------------------------------------- noise helpers

def periodic_noise(rng: np.random.Generator, h: int, w: int, sy: float, sx: float) -> np.ndarray:
    """Zero-mean unit-std Gaussian noise, periodic on h×w, correlated over ~(sy, sx) px."""
    white = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    filt = np.exp(-2.0 * (np.pi ** 2) * ((fy * sy) ** 2 + (fx * sx) ** 2))
    out = np.real(np.fft.ifft2(np.fft.fft2(white) * filt))
    out -= out.mean()
    return (out / max(out.std(), 1e-9)).astype(np.float32)


def _round_to(n: float, period: int) -> int:
    return max(period, int(round(n / period)) * period)


# --------------------------------------------------------------------------- weaves

def _weave(rng: np.random.Generator, pitch: int, kind: str, size: int = 256,
           relief: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """Woven structure → (shade, warp_on_top mask). Warp yarns run along y, weft along x."""
    repeat = {"plain": 2, "twill": 4, "twill3": 3, "satin": 5, "basket": 4}[kind]
    n = _round_to(size, pitch * repeat)
    yy, xx = np.mgrid[0:n, 0:n]
    i, j = xx // pitch, yy // pitch                       # warp index (column), weft index (row)
    fx, fy = (xx % pitch + 0.5) / pitch, (yy % pitch + 0.5) / pitch
    hand = 1 if rng.random() < 0.5 else -1
    if kind == "plain":
        top = (i + j) % 2 == 0
    elif kind == "twill":
        top = (i + hand * j) % 4 < 2
    elif kind == "twill3":
        top = (i + hand * j) % 4 < 3                      # 3/1 warp-faced (denim)
    elif kind == "satin":
        top = (2 * i + j) % 5 != 0                        # 5-harness warp-faced satin
    else:                                                 # basket 2/2
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
    prof = np.maximum(np.exp(-((fx - cl) / 0.17) ** 2), np.exp(-((fx - cr) / 0.17) ** 2))
    prof *= 0.8 + 0.2 * np.sin(np.pi * fy)
    var = 1.0 + 0.05 * rng.standard_normal(w // pw)[xx // pw]
    fuzz = periodic_noise(rng, h, w, 0.8, 0.8)
    shade = 0.5 + 0.55 * prof * var + 0.03 * fuzz
    return shade.astype(np.float32), np.zeros((h, w), np.float32)


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
    rngs = iter(np.random.default_rng(s) for s in seq.spawn(64))

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
        weft = np.pad(1.0 - m, 4, mode="wrap")
        weft = cv2.GaussianBlur(weft, (0, 0), 0.6 * pitch / 4)[4:-4, 4:-4] * r.uniform(0.45, 0.7)
        tiles.append(Tile("denim", np.dstack([s, weft.astype(np.float32)]), True, 0.05))
    for pitch in (3, 4):
        s, m = _weave(next(rngs), pitch, "satin", relief=0.18)
        tiles.append(Tile("satin", np.dstack([s, np.zeros_like(m)]), False, 0.9))
    s, m = _weave(next(rngs), 4, "basket")
    tiles.append(Tile("basket", np.dstack([s, m * 0]), False, 0.1))
    for _ in range(3):
        s, m = _knit(next(rngs))
        tiles.append(Tile("knit", np.dstack([s, m]), False, 0.1))
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
        if rng.random() < 0.15:   # black denim
            c0 = hsv_bgr(0.6, 0.1, rng.uniform(0.1, 0.25))
        c1 = hsv_bgr(rng.uniform(0.08, 0.15), rng.uniform(0.02, 0.15), rng.uniform(0.7, 0.92))
        return c0, c1
    u = rng.random()
    if u < 0.3:       # neutrals: black, greys, white, beige
        c0 = hsv_bgr(rng.uniform(0, 1), rng.uniform(0, 0.12), rng.uniform(0.08, 0.95))
    elif u < 0.65:    # muted colours: khaki, navy, olive, burgundy
        c0 = hsv_bgr(rng.uniform(0, 1), rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.8))
    else:             # saturated
        c0 = hsv_bgr(rng.uniform(0, 1), rng.uniform(0.55, 1.0), rng.uniform(0.35, 0.95))
    if tile.kind == "jacquard" and rng.random() < 0.6:
        h, s, v = colorsys.rgb_to_hsv(*c0[::-1])
        c1 = hsv_bgr(h, s, v + rng.choice([-1, 1]) * rng.uniform(0.1, 0.2))
    elif tile.two_tone:
        c1 = hsv_bgr(rng.uniform(0, 1), rng.uniform(0, 0.9), rng.uniform(0.15, 0.95))
    else:
        c1 = c0
    return c0, c1


def thread_colour(rng: np.random.Generator, refs: list[np.ndarray], close: bool) -> np.ndarray:
    """A thread colour that is either contrasting or tone-on-tone, but never invisible.

    ``refs`` are the fabric colours the thread must stand out from (the mean colour, or both
    colours of a print). Tone-on-tone threads keep the first colour's hue with a luma
    difference ≥ 0.2 from every ref (plus the thread's own highlight and shadow); contrasting
    ones differ by ≥ 0.3 in luma, or ≥ 0.15 in luma and ≥ 0.5 in a channel. So stitches, gaps
    and defects stay visible to a human at 128×128.
    """
    ls = [luma(r) for r in refs]
    lo, hi = min(ls), max(ls)
    want = rng.uniform(0.2, 0.3)
    if close and (hi + want <= 0.92 or lo - want >= 0.06):
        can_l, can_d = hi + want <= 0.92, lo - want >= 0.06
        lighter = can_l if not (can_l and can_d) else (lo < 0.3 or (hi <= 0.7 and bool(rng.random() < 0.5)))
        h, s, v = colorsys.rgb_to_hsv(*refs[0][::-1])
        c = hsv_bgr(h + rng.uniform(-0.04, 0.04), s * rng.uniform(0.6, 1.1),
                    v + (1 if lighter else -1) * rng.uniform(0.2, 0.4))
        target = np.ones(3, np.float32) if lighter else np.zeros(3, np.float32)
        for t in np.linspace(0.0, 1.0, 41):    # blend toward white/black until it shows
            cc = c * (1 - t) + target * t
            if min(abs(luma(cc) - x) for x in ls) >= want:
                return cc.astype(np.float32)

    def stands_out(c: np.ndarray) -> bool:
        return all(abs(luma(c) - lr) >= 0.3 or (abs(luma(c) - lr) >= 0.15 and np.abs(c - r).max() >= 0.5)
                   for r, lr in zip(refs, ls))

    for _ in range(60):
        u = rng.random()
        if u < 0.3:
            c = hsv_bgr(0, 0, rng.uniform(0.85, 0.97)) if lo < 0.55 else hsv_bgr(0, 0, rng.uniform(0.05, 0.2))
        elif u < 0.5:   # gold / orange topstitch
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
    angle: float          # radians, grain vs seam
    scale: float          # tile px per canvas px
    offset: tuple[float, float]
    c0: np.ndarray
    c1: np.ndarray
    texture: float = 1.0  # relief contrast (1 = the tile's own)


def random_look(rng: np.random.Generator, px_per_mm: float) -> FabricLook:
    """Pick a tile, grain orientation, yarn-size jitter and colours."""
    bank = tile_bank()
    idx = int(rng.integers(0, len(bank)))
    tile = bank[idx]
    u = rng.random()
    base = 0.0 if u < 0.45 else (np.pi / 2 if u < 0.9 else np.pi / 4)
    angle = base + rng.normal(0, 0.04)
    scale = BASE_PX_PER_MM / px_per_mm / rng.uniform(0.8, 1.25)
    off = (float(rng.uniform(0, 4096)), float(rng.uniform(0, 4096)))
    c0, c1 = fabric_colours(rng, tile)
    texture = rng.uniform(0.35, 1.0)
    return FabricLook(idx, float(angle), float(scale), off, c0, c1, float(texture))


def render_fabric(look: FabricLook, x0: float, y0: float, w: int, h: int) -> np.ndarray:
    """Fabric BGR float32 [h, w, 3] for the canvas window starting at (x0, y0)."""
    tile = tile_bank()[look.tile_index]
    ca, sa = np.cos(look.angle) * look.scale, np.sin(look.angle) * look.scale
    # dst (x, y) → src = A @ (x + x0, y + y0) + offset   (WARP_INVERSE_MAP)
    tx = ca * x0 - sa * y0 + look.offset[0]
    ty = sa * x0 + ca * y0 + look.offset[1]
    m = np.float32([[ca, -sa, tx], [sa, ca, ty]])
    sm = cv2.warpAffine(tile.data, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                        borderMode=cv2.BORDER_WRAP)
    shade, mask = sm[..., 0], sm[..., 1]
    if look.texture != 1.0:
        m = _tile_mean(look.tile_index)
        shade = m + look.texture * (shade - m)
    out = shade[..., None] * look.c0
    if tile.two_tone:
        out += (shade * mask)[..., None] * (look.c1 - look.c0)
    return out


@lru_cache(maxsize=None)
def _tile_mean(index: int) -> float:
    return float(tile_bank()[index].data[..., 0].mean())


def reference_colours(look: FabricLook) -> list[np.ndarray]:
    """Colours a thread must stand out from: the mean for fine two-tone weaves (denim reads
    as one colour at camera scale), each colour for prints and jacquards (large patches)."""
    tile = tile_bank()[look.tile_index]
    if tile.kind in ("print", "jacquard"):
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
