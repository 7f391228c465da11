"""Seam rendering for ``convert.synth``: stitches, defects, lighting and camera effects.

Everything is built in *strip coordinates* (canvas pixels at the render scale ``S`` px/mm, the
seam running along +x), so one ``Scene`` can be rendered as a 256×256 still or as any window of a
long video strip with identical looks. Rendering is split in two:

* ``render_static(scene, x0, y0, w, h)``: fabric, seam shading, needle holes, threads and their
  shadows, in linear-ish float BGR 0..1 — what is physically on the table;
* ``camera(img, cam, rng)``: lighting field, white balance, defocus/motion blur, sensor noise,
  JPEG — what the camera adds, varied per still and smoothly per video frame.

Defect geometry (label ``error`` or ``break``) is generated with its tight box, before any
camera effect, so boxes are exact in the saved image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from convert.synth_fabric import (FabricLook, mean_colour, random_look, reference_colours, render_fabric,
                                  thread_colour, tile_bank)

SHIFT = 4                    # cv2 fixed-point bits: 1/16 px sub-pixel drawing
ONE = 1 << SHIFT

ERROR_KINDS = ("loop", "sag", "pulled", "widened")


@dataclass(frozen=True)
class Box:
    """A defect instance: label and tight pixel box (x, y, w, h) in the saved image."""

    label: str
    x: int
    y: int
    w: int
    h: int


@dataclass
class Defect:
    """A defect in strip coordinates (float box x0, y0, x1, y1)."""

    label: str
    kind: str
    box: tuple[float, float, float, float]


@dataclass
class Scene:
    """Everything physically on the table, in strip coordinates (px at ``S`` px/mm)."""

    S: float
    look: FabricLook
    thread_bgr: np.ndarray
    thread_w: int                         # px (cv2 thickness)
    flat: list[np.ndarray] = field(default_factory=list)     # stitch dashes (polylines)
    raised: list[np.ndarray] = field(default_factory=list)   # loops, loose ends (cast shadows)
    holes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    hole_r: float = 2.0
    centre_u: np.ndarray = field(default_factory=lambda: np.zeros(0))   # seam centreline samples
    centre_v: np.ndarray = field(default_factory=lambda: np.zeros(0))
    edge: float = 0.0                     # signed offset (px) of the top ply's edge; 0 = none
    groove: float = 0.1                   # darkening along the stitch line (compressed fabric)
    pucker: float = 0.03                  # small wrinkles across the seam
    light: tuple[float, float] = (0.6, 0.8)   # unit vector the shadows fall along
    twist: float = 0.08                   # contrast of the thread's ply twist
    lint: list[np.ndarray] = field(default_factory=list)     # stray fibres (1 px, faint)
    lint_bgr: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    defects: list[Defect] = field(default_factory=list)


@dataclass(frozen=True)
class Camera:
    """Per-frame camera/lighting parameters (vary smoothly along a video)."""

    gain: float = 1.0
    wb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    grad: tuple[float, float] = (0.0, 0.0)      # relative gain change across the frame (x, y)
    vignette: float = 0.0
    shadow: float = 0.0                          # depth of a soft cast shadow (0 = none)
    shadow_line: tuple[float, float, float] = (0.0, 1.0, 0.0)  # nx, ny, c (frame-relative)
    shadow_soft: float = 0.1
    sheen: float = 0.0                           # specular band amplitude
    sheen_line: tuple[float, float, float] = (1.0, 0.0, 0.5)
    sheen_width: float = 0.2
    defocus: float = 0.0                         # Gaussian sigma, px
    motion: float = 0.0                          # motion blur length, px (along x)
    noise: float = 2.0                           # sensor noise sigma (0..255 units)
    shot: float = 4.0                            # signal-dependent noise
    jpeg: int = 0                                # JPEG quality, 0 = none


# --------------------------------------------------------------------------- geometry helpers

def _chaikin(pts: np.ndarray, n: int = 2) -> np.ndarray:
    """Corner-cutting smoothing of an open polyline (keeps the end points)."""
    for _ in range(n):
        q = 0.75 * pts[:-1] + 0.25 * pts[1:]
        r = 0.25 * pts[:-1] + 0.75 * pts[1:]
        mid = np.empty((2 * len(q), 2), pts.dtype)
        mid[0::2], mid[1::2] = q, r
        pts = np.vstack([pts[:1], mid, pts[-1:]])
    return pts


def _frame(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    d = b - a
    L = float(np.hypot(*d))
    t = d / max(L, 1e-6)
    return t, np.array([-t[1], t[0]]), L


def _bbox(paths: list[np.ndarray], pad: float) -> tuple[float, float, float, float]:
    allp = np.vstack(paths)
    return (float(allp[:, 0].min() - pad), float(allp[:, 1].min() - pad),
            float(allp[:, 0].max() + pad), float(allp[:, 1].max() + pad))


def error_paths(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, side: float, S: float,
                kind: str, c: np.ndarray | None = None) -> list[np.ndarray]:
    """Thread path(s) of a faulty stitch from hole ``a`` to hole ``b`` (``c``: a skipped hole).

    Every kind leaves the stitch line by ≥ 1.2 mm so it is plain to see at 128×128.
    """
    t, n, L = _frame(a, b)
    n = n * side
    s = np.linspace(0.0, 1.0, 40)[:, None]
    if kind == "loop":          # a curl: the thread runs forward, loops back over itself, on
        H = rng.uniform(1.8, 3.0) * S
        c_ = rng.uniform(0.22, 0.32) * max(1.0, 2.2 * S / max(L, 1))
        x = s + c_ * np.sin(2 * np.pi * s)
        y = np.sin(np.pi * s) ** 0.7
        return [a + t * (x * L) + n * (y * H)]
    if kind == "sag":           # slack thread bowing off the line
        H = rng.uniform(1.4, 2.6) * S
        skew = rng.uniform(-0.25, 0.25)
        y = np.sin(np.pi * np.clip(s + skew * np.sin(np.pi * s), 0, 1))
        return [a + t * (s * L) + n * (y * H)]
    if kind == "pulled":        # a narrow loop pulled up out of the fabric
        H = rng.uniform(2.2, 3.6) * S
        m = a + t * (L * rng.uniform(0.4, 0.6))
        lean = rng.uniform(-0.5, 0.5) * S
        wid = rng.uniform(0.35, 0.6) * S
        apex = m + n * H + t * lean
        pts = np.array([a, m - t * wid, apex - t * wid * 0.6, apex + n * wid * 0.5,
                        apex + t * wid * 0.6, m + t * wid, b])
        return [_chaikin(pts, 3)]
    # widened: the stitch splits into two strands opening into an eye
    H1, H2 = rng.uniform(1.0, 1.5) * S, rng.uniform(0.9, 1.4) * S
    y = np.sin(np.pi * s) ** 0.8
    return [a + t * (s * L) + n * (y * H1), a + t * (s * L) - n * (y * H2)]


def tail_path(rng: np.random.Generator, p: np.ndarray, direction: np.ndarray, S: float
              ) -> list[np.ndarray]:
    """A loose cut thread end starting at hole ``p`` heading roughly along ``direction``."""
    L = rng.uniform(1.3, 2.4) * S
    ang = np.arctan2(direction[1], direction[0])
    k = rng.uniform(-1.2, 1.2) / L          # curvature
    seg = np.linspace(0, L, 24)
    th = ang + k * seg + rng.normal(0, 0.05, len(seg)).cumsum()
    pts = p + np.stack([np.cos(th), np.sin(th)], 1).cumsum(0) * (L / len(seg))
    pts = np.vstack([p, pts])
    out = [pts]
    if rng.random() < 0.5:                  # frayed tip: a short second strand
        q = pts[-8]
        a2 = th[-8] + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9)
        seg2 = np.linspace(0, L * 0.3, 8)[:, None]
        out.append(q + seg2 * np.array([np.cos(a2), np.sin(a2)]))
    return out


# --------------------------------------------------------------------------- scene building

def random_scene_style(rng: np.random.Generator, S: float) -> Scene:
    """Fabric, thread and seam-shading style (no stitches yet)."""
    look = random_look(rng, S)
    kind = tile_bank()[look.tile_index].kind
    close = rng.random() < 0.4 and kind != "denim"       # denim is topstitched in contrast
    tc = thread_colour(rng, reference_colours(look), close)
    tw = max(1, int(round(rng.uniform(0.36, 0.56) * S)))
    ang = rng.uniform(0, 2 * np.pi)
    edge = 0.0
    if rng.random() < 0.55:
        edge = float(rng.choice([-1, 1]) * rng.uniform(2.5, 6.0) * S)
    fab = mean_colour(look)
    lint_bgr = (fab + (1.0 - fab) * rng.uniform(0.3, 0.8)).astype(np.float32)
    return Scene(S=S, look=look, thread_bgr=tc, thread_w=tw, hole_r=rng.uniform(0.16, 0.26) * S,
                 edge=edge, groove=rng.uniform(0.04, 0.16), pucker=rng.uniform(0.0, 0.05),
                 light=(float(np.cos(ang)), float(np.sin(ang))), twist=rng.uniform(0.04, 0.14),
                 lint_bgr=lint_bgr)


def add_lint(scene: Scene, rng: np.random.Generator, u0: float, u1: float, v0: float, v1: float,
             per_cm2: float) -> None:
    """Stray fibres: short thin curls lying on the cloth (nuisance, never thread-thick)."""
    S = scene.S
    area_cm2 = (u1 - u0) * (v1 - v0) / (10 * S) ** 2
    for _ in range(int(rng.poisson(per_cm2 * area_cm2))):
        p = np.array([rng.uniform(u0, u1), rng.uniform(v0, v1)])
        L = rng.uniform(0.6, 2.5) * S
        th = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.25, 10))
        pts = p + np.cumsum(np.stack([np.cos(th), np.sin(th)], 1), 0) * (L / 10)
        scene.lint.append(np.vstack([p, pts]))


def stitch_holes(rng: np.random.Generator, u0: float, u1: float, pitch_px, centre) -> np.ndarray:
    """Needle penetration points from u0 to u1; ``pitch_px(u)`` gives the local pitch."""
    us = []
    u = u0
    while u < u1:
        us.append(u)
        u += pitch_px(u) * (1.0 + rng.normal(0, 0.015))
    us = np.asarray(us)
    vs = centre(us) + rng.normal(0, 0.025, len(us)) * pitch_px(us[0])
    return np.stack([us, vs], 1)


def add_stitches(scene: Scene, rng: np.random.Generator, holes: np.ndarray,
                 skip: set[int]) -> None:
    """Stitch dashes between consecutive holes (except indices in ``skip``).

    The random gaps are drawn for every stitch, skipped or not, so a scene with and without
    defects (same generator) has identical good stitches.
    """
    S = scene.S
    gaps = rng.uniform(0.22, 0.36, len(holes)) * S       # thread dives into the hole at each end
    for k in range(len(holes) - 1):
        if k in skip:
            continue
        a, b = holes[k], holes[k + 1]
        t, _, L = _frame(a, b)
        g = gaps[k]
        scene.flat.append(np.array([a + t * g, b - t * g]))
    scene.holes = holes.astype(np.float32) if len(scene.holes) == 0 else np.vstack([scene.holes, holes])


def make_error(scene: Scene, rng: np.random.Generator, holes: np.ndarray, k: int, side: float,
               kind: str | None = None) -> tuple[set[int], Defect]:
    """Replace stitch k (and k+1 for a sag over a skipped hole) by a faulty one."""
    kind = kind or ERROR_KINDS[int(rng.integers(0, len(ERROR_KINDS)))]
    S = scene.S
    span = 2 if (kind == "sag" and rng.random() < 0.5) else 1
    a, b = holes[k], holes[k + span]
    t, _, _ = _frame(a, b)
    g = 0.2 * S
    paths = error_paths(rng, a + t * g, b - t * g, side, S, kind)
    scene.raised.extend(paths)
    box = _bbox(paths, scene.thread_w / 2 + 0.5)
    return set(range(k, k + span)), Defect("error", kind, box)


def make_break(scene: Scene, rng: np.random.Generator, holes: np.ndarray, k: int, m: int,
               side: float) -> tuple[set[int], Defect]:
    """Cut thread: stitches k..k+m-1 missing (a gap ≥ 4 mm), loose ends at both sides."""
    S = scene.S
    a, b = holes[k], holes[k + m]
    t, n, gap_len = _frame(a, b)
    paths: list[np.ndarray] = []
    # each end sticks out of the line as a short whisker that never reaches more than a third
    # into the gap, so a break never looks like a continuous (sagging) thread
    one_side = rng.random() < 0.5
    for j, (p, d0) in enumerate(((a, t), (b, -t))):
        if rng.random() < 0.85 or not paths:
            sd = side if (one_side or j == 0) else -side
            for _ in range(12):
                ang = rng.uniform(0.7, 1.9)
                d = d0 * np.cos(ang) + n * sd * np.sin(ang)
                tail = tail_path(rng, p, d, S)
                # tips must not converge into a V (which would read as a sagging stitch)
                apart = not paths or float(np.hypot(*(tail[0][-1] - paths[0][-1]))) >= 0.6 * gap_len
                if apart and max(float(((q - p) @ d0).max()) for q in tail) <= gap_len / 3:
                    break
            else:   # fall back to a straight whisker square to the seam
                tail = [p + np.linspace(0, 1.6 * S, 12)[:, None] * (n * sd)]
            paths.extend(tail)
    scene.raised.extend(paths)
    gap = [np.array([a, b])]
    box = _bbox(paths + gap, scene.thread_w / 2 + 0.5)
    return set(range(k, k + m)), Defect("break", "cut", box)


def break_span(rng: np.random.Generator, pitch_mm: float) -> int:
    """How many stitches a break removes: the gap is always ≥ 4 mm."""
    if pitch_mm >= 3.0:
        return 1 if rng.random() < 0.75 else 2
    return 2 if rng.random() < 0.6 else 3


# --------------------------------------------------------------------------- static rendering

def _poly_i(paths: list[np.ndarray], x0: float, y0: float) -> list[np.ndarray]:
    off = np.array([x0, y0])
    return [np.round((p - off) * ONE).astype(np.int32) for p in paths]


def _visible(paths: list[np.ndarray], x0: float, y0: float, w: int, h: int, pad: float
             ) -> list[np.ndarray]:
    out = []
    for p in paths:
        if (p[:, 0].max() >= x0 - pad and p[:, 0].min() <= x0 + w + pad
                and p[:, 1].max() >= y0 - pad and p[:, 1].min() <= y0 + h + pad):
            out.append(p)
    return out


def _rows(lo: float, hi: float, y0: float, h: int) -> tuple[int, int]:
    return int(np.clip(np.floor(lo - y0), 0, h)), int(np.clip(np.ceil(hi - y0), 0, h))


def render_static(scene: Scene, x0: float, y0: float, w: int, h: int) -> np.ndarray:
    """Fabric + seam + threads for window (x0, y0, w, h) of the strip → float32 BGR [h, w, 3].

    Seam shading and threads are computed only in the band of rows they can touch.
    """
    S = scene.S
    img = render_fabric(scene.look, x0, y0, w, h)

    # seam shading: groove along the stitches, ply edge with its shadow, puckering
    xs = np.arange(w, dtype=np.float32) + x0
    cv = np.interp(xs, scene.centre_u, scene.centre_v).astype(np.float32)
    top, bot = float(cv.min()) - 3.6 * S, float(cv.max()) + 3.6 * S
    if scene.edge:
        top = min(top, float(cv.min()) + scene.edge - 2 * S)
        bot = max(bot, float(cv.max()) + scene.edge + 2 * S)
    r0, r1 = _rows(top, bot, y0, h)
    if r1 > r0:
        dy = (np.arange(r0, r1, dtype=np.float32)[:, None] + y0) - cv[None, :]
        g = 1.0 - scene.groove * np.exp(-(dy / (0.45 * S)) ** 2)
        if scene.pucker > 0:
            g *= 1.0 + scene.pucker * np.sin(xs / (0.9 * S))[None, :] * np.exp(-(dy / (1.2 * S)) ** 2)
        if scene.edge:
            de = (dy - scene.edge) * np.sign(scene.edge)      # > 0: beyond the top ply's edge
            g *= np.where(de > 0, 0.9 - 0.25 * np.exp(-de / (0.5 * S)), 1.0 + 0.08 * np.exp(de / (0.25 * S)))
        img[r0:r1] *= g[..., None]
    if scene.edge > 0:                                   # the lower ply, beyond the band
        img[r1:] *= 0.9
    elif scene.edge < 0:
        img[:r0] *= 0.9

    pad = 6 * S
    lint = _visible(scene.lint, x0, y0, w, h, pad)
    if lint:
        la = np.zeros((h, w), np.uint8)
        cv2.polylines(la, _poly_i(lint, x0, y0), False, 110, 1, cv2.LINE_AA, SHIFT)
        laf = la.astype(np.float32) * (1 / 255)
        img += laf[..., None] * (scene.lint_bgr - img)
    flat = _visible(scene.flat, x0, y0, w, h, pad)
    raised = _visible(scene.raised, x0, y0, w, h, pad)
    holes = scene.holes
    if len(holes):
        holes = holes[(holes[:, 0] >= x0 - pad) & (holes[:, 0] <= x0 + w + pad)
                      & (holes[:, 1] >= y0 - pad) & (holes[:, 1] <= y0 + h + pad)]
    if not (flat or raised or len(holes)):
        return img
    tw = scene.thread_w
    lx, ly = scene.light
    ys = [p[:, 1] for p in flat + raised] + ([holes[:, 1]] if len(holes) else [])
    yy_all = np.concatenate(ys)
    reach = tw + 0.5 * S + 4 * max(0.6, 0.1 * S) + 2
    t0, t1 = _rows(float(yy_all.min()) - reach, float(yy_all.max()) + reach, y0, h)
    if t1 <= t0:
        return img
    bh, by0 = t1 - t0, y0 + t0
    band = img[t0:t1]

    # shadows of threads: flat ones close, raised ones further away and softer; needle holes
    sh = np.zeros((bh, w), np.uint8)
    if flat:
        cv2.polylines(sh, _poly_i(flat, x0 - 0.1 * S * lx, by0 - 0.1 * S * ly), False, 160,
                      tw + 1, cv2.LINE_AA, SHIFT)
    if raised:
        cv2.polylines(sh, _poly_i(raised, x0 - 0.35 * S * lx, by0 - 0.35 * S * ly), False, 220,
                      tw, cv2.LINE_AA, SHIFT)
    r = max(1, int(round(scene.hole_r * ONE)))
    for p in holes:
        c = (int(round((p[0] - x0) * ONE)), int(round((p[1] - by0) * ONE)))
        cv2.circle(sh, c, r, 255, -1, cv2.LINE_AA, SHIFT)
    shf = cv2.GaussianBlur(sh, (0, 0), max(0.6, 0.1 * S)).astype(np.float32) * (0.6 / 255)
    band *= (1.0 - shf)[..., None]

    # threads: alpha + highlight toward the light
    if flat or raised:
        a = np.zeros((bh, w), np.uint8)
        hi = np.zeros((bh, w), np.uint8)
        allp = flat + raised
        cv2.polylines(a, _poly_i(allp, x0, by0), False, 255, tw, cv2.LINE_AA, SHIFT)
        hw = max(1, tw // 3)
        # a stitch arches between its holes: the highlight covers its middle, the ends dip
        mids = [np.array([p[0] * 0.8 + p[1] * 0.2, p[0] * 0.2 + p[1] * 0.8]) for p in flat]
        hx, hy = 0.25 * tw * lx, 0.25 * tw * ly
        if mids:
            cv2.polylines(hi, _poly_i(mids, x0 + hx, by0 + hy), False, 255, hw, cv2.LINE_AA, SHIFT)
        if raised:
            cv2.polylines(hi, _poly_i(raised, x0 + hx, by0 + hy), False, 255, hw, cv2.LINE_AA, SHIFT)
        hi = cv2.GaussianBlur(hi, (0, 0), max(0.5, tw * 0.15))
        af = a.astype(np.float32) * (1 / 255)
        shade = 0.68 + 0.5 * hi.astype(np.float32) * (1 / 255)
        if scene.twist > 0:     # ply twist: fine diagonal ridges across the thread
            yy = np.arange(bh, dtype=np.float32)[:, None] + by0
            xx = np.arange(w, dtype=np.float32)[None, :] + x0
            shade *= 1.0 + scene.twist * np.sin((xx * 0.55 + yy) * (2 * np.pi / (0.3 * S)))
        thread = shade[..., None] * scene.thread_bgr
        band += af[..., None] * (thread - band)
    return img


# --------------------------------------------------------------------------- camera

@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """Unit Gaussian noise, 768×768×3, fixed seed: sensor noise is a random crop of it."""
    return np.random.default_rng(7).standard_normal((768, 768, 3)).astype(np.float32)


def random_camera(rng: np.random.Generator, sheen: float, S: float, still: bool = True) -> Camera:
    """Lighting and camera imperfections for one still (or a video's base)."""
    shadow = rng.uniform(0.15, 0.45) if rng.random() < 0.3 else 0.0
    th = rng.uniform(0, 2 * np.pi)
    sh_amp = 0.0
    if rng.random() < 0.15 + sheen * 0.8:
        sh_amp = rng.uniform(0.05, 0.12 + 0.18 * sheen)
    ts = rng.uniform(0, 2 * np.pi)
    k = S / 12.5
    return Camera(
        gain=rng.uniform(0.7, 1.25),
        wb=tuple(rng.uniform(0.9, 1.1, 3)),
        grad=tuple(rng.uniform(-0.25, 0.25, 2)),
        vignette=rng.uniform(0.0, 0.35),
        shadow=shadow,
        shadow_line=(float(np.cos(th)), float(np.sin(th)), rng.uniform(-0.4, 0.4)),
        shadow_soft=rng.uniform(0.04, 0.25),
        sheen=sh_amp,
        sheen_line=(float(np.cos(ts)), float(np.sin(ts)), rng.uniform(-0.4, 0.4)),
        sheen_width=rng.uniform(0.08, 0.3),
        defocus=(rng.uniform(0.0, 1.3) if rng.random() < 0.6 else 0.0) * k,
        motion=(rng.uniform(1.0, 5.0) if rng.random() < 0.3 else 0.0) * k,
        noise=rng.uniform(0.8, 5.0),
        shot=rng.uniform(0.0, 6.0),
        jpeg=int(rng.integers(40, 93)) if (still and rng.random() < 0.6) else 0,
    )


def light_field(cam: Camera, w: int, h: int) -> np.ndarray:
    """Multiplicative illumination [h, w] (gradient, vignette, soft cast shadow)."""
    gw, gh = max(2, w // 8), max(2, h // 8)
    sc = max(w, h)
    x = (np.linspace(0, w, gw, dtype=np.float32) - w / 2) / sc
    y = (np.linspace(0, h, gh, dtype=np.float32) - h / 2) / sc
    X, Y = np.meshgrid(x, y)
    f = cam.gain * (1 + cam.grad[0] * 2 * X + cam.grad[1] * 2 * Y) * (1 - cam.vignette * (X * X + Y * Y) * 2)
    if cam.shadow > 0:
        nx, ny, c = cam.shadow_line
        d = (nx * X + ny * Y - c) / cam.shadow_soft
        f *= 1 - cam.shadow / (1 + np.exp(-np.clip(d, -30, 30)))
    return cv2.resize(f.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def sheen_field(cam: Camera, w: int, h: int) -> np.ndarray | None:
    """Additive specular band (satin sheen, glossy threads), or None."""
    if cam.sheen <= 0:
        return None
    gw, gh = max(2, w // 8), max(2, h // 8)
    sc = max(w, h)
    X, Y = np.meshgrid((np.linspace(0, w, gw, dtype=np.float32) - w / 2) / sc,
                       (np.linspace(0, h, gh, dtype=np.float32) - h / 2) / sc)
    nx, ny, c = cam.sheen_line
    f = cam.sheen * np.exp(-((nx * X + ny * Y - c) / cam.sheen_width) ** 2)
    return cv2.resize(f.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def camera(img: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Static scene (float BGR 0..1) → camera image uint8 BGR."""
    h, w = img.shape[:2]
    img = img * light_field(cam, w, h)[..., None]
    img *= np.asarray(cam.wb, np.float32)
    sf = sheen_field(cam, w, h)
    if sf is not None:
        img += sf[..., None] * (1.0 - 0.5 * img)
    if cam.defocus > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), cam.defocus)
    if cam.motion >= 1.0:
        n = int(np.ceil(cam.motion)) | 1
        kern = np.zeros((1, n), np.float32)
        kern[0, :] = 1.0 / n
        img = cv2.filter2D(img, -1, kern)
    bank = _noise_bank()
    oy = int(rng.integers(0, bank.shape[0] - h + 1))
    ox = int(rng.integers(0, bank.shape[1] - w + 1))
    nz = bank[oy:oy + h, ox:ox + w]
    img = img * 255.0
    sigma = cam.noise + cam.shot * np.sqrt(np.clip(img, 0, 255) * (1 / 255))
    img += nz * sigma
    out = np.clip(img, 0, 255).astype(np.uint8)
    if cam.jpeg:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, cam.jpeg])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out


# --------------------------------------------------------------------------- stills

def _centre_fn(rng: np.random.Generator, size: int, S: float):
    """Seam centreline v(u) for a still: near the middle, slight tilt and curvature."""
    v0 = size * rng.uniform(0.36, 0.64)
    tilt = np.tan(rng.normal(0, 0.05))
    curv = rng.normal(0, 0.6) / (size * size) * S * 2
    uc = size / 2

    def centre(u):
        u = np.asarray(u, np.float64)
        return v0 + tilt * (u - uc) + curv * (u - uc) ** 2
    return centre


def _inside(box, size: int, margin: float) -> bool:
    return box[0] >= margin and box[1] >= margin and box[2] <= size - margin and box[3] <= size - margin


def _inside_x(box, size: int, margin: float, margin_x: float) -> bool:
    return _inside(box, size, margin) and box[0] >= margin_x and box[2] <= size - margin_x


def build_still(rng: np.random.Generator, drng: np.random.Generator, size: int, S: float,
                error: bool, brk: bool, length: bool) -> Scene:
    """A still's scene with the requested labels; defects wholly inside, ≥ margin from border.

    ``rng`` draws the fabric, thread and seam, ``drng`` only the defects: the same ``rng``
    state with and without defects gives the same picture apart from the defects.
    """
    pitch_mm = 2.0 if length else 4.0
    margin = max(2.0, size * 0.03)
    scene = random_scene_style(rng, S)
    centre = _centre_fn(rng, size, S)
    pitch = pitch_mm * S
    holes = stitch_holes(rng, -pitch * rng.uniform(1.0, 2.0), size + 2 * pitch, lambda u: pitch, centre)
    cu = np.linspace(-64, size + 64, 64)
    scene.centre_u, scene.centre_v = cu, centre(cu)
    if rng.random() < 0.5:
        add_lint(scene, rng, -8, size + 8, -8, size + 8, rng.uniform(0.5, 3.0))
    n = len(holes)
    inner = [k for k in range(1, n - 4) if margin < holes[k, 0] and holes[k + 1, 0] < size - margin]
    wanted = (["error"] if error else []) + (["break"] if brk else [])
    if len(wanted) == 2 and drng.random() < 0.5:
        wanted.reverse()
    for _attempt in range(200):
        if _attempt and _attempt % 40 == 0:
            # rare (two defects at 4 mm pitch): slide the stitches along the seam and retry
            du = drng.uniform(0.2, 0.8) * pitch
            dv = centre(holes[:, 0] + du) - centre(holes[:, 0])
            holes = np.stack([holes[:, 0] + du, holes[:, 1] + dv], 1)
            inner = [k for k in range(1, n - 4) if margin < holes[k, 0] and holes[k + 1, 0] < size - margin]
        skip: set[int] = set()
        raised: list[np.ndarray] = []
        defects: list[Defect] = []
        for label in wanted:
            for _try in range(30):
                k = inner[int(drng.integers(0, len(inner)))]
                mid_v = holes[k, 1]
                side = -1.0 if mid_v > size / 2 else 1.0
                if abs(mid_v - size / 2) < size * 0.08 and drng.random() < 0.5:
                    side = -side
                trial = Scene(S=S, look=scene.look, thread_bgr=scene.thread_bgr, thread_w=scene.thread_w)
                if label == "error":
                    ks, d = make_error(trial, drng, holes, k, side)
                else:
                    ks, d = make_break(trial, drng, holes, k, break_span(drng, pitch_mm), side)
                # a break keeps ≥ half a stitch of seam visible on both sides of its gap
                m_ok = margin + (0.5 * pitch if label == "break" else 0.0)
                if not _inside_x(d.box, size, margin, m_ok) or ks & skip or any(
                        not (d.box[2] < u.box[0] - 3 or d.box[0] > u.box[2] + 3) for u in defects):
                    continue
                raised.extend(trial.raised)
                defects.append(d)
                skip |= ks
                break
            else:
                break
        if len(defects) == len(wanted):
            break
    else:  # pragma: no cover - a 20-mm view always has room for two defects
        raise RuntimeError(f"could not place defects {wanted}")
    scene.raised.extend(raised)
    scene.defects.extend(defects)
    add_stitches(scene, rng, holes, skip)
    return scene


def render_still(rng: np.random.Generator, size: int, S: float, error: bool, brk: bool,
                 length: bool) -> tuple[np.ndarray, list[Box]]:
    """Render one still at ``size`` px and ``S`` px/mm → (uint8 BGR, boxes).

    Scene, defects and camera use separate child generators of ``rng`` (see ``build_still``).
    """
    r_scene, r_defect, r_cam = rng.spawn(3)
    scene = build_still(r_scene, r_defect, size, S, error, brk, length)
    static = render_static(scene, 0.0, 0.0, size, size)
    cam = random_camera(r_cam, tile_bank()[scene.look.tile_index].sheen, S)
    img = camera(static, cam, r_cam)
    boxes = []
    for d in scene.defects:
        x0, y0 = int(np.floor(d.box[0])), int(np.floor(d.box[1]))
        x1, y1 = int(np.ceil(d.box[2])), int(np.ceil(d.box[3]))
        boxes.append(Box(d.label, x0, y0, x1 - x0, y1 - y0))
    return img, boxes


__all__ = ["Box", "Camera", "Defect", "Scene", "render_still", "render_static", "camera",
           "random_camera", "random_scene_style", "stitch_holes", "add_stitches", "make_error",
           "make_break", "break_span", "add_lint", "build_still"]
