"""Labeling as a pure state machine: key names in, the seed's PNG + CSV files out.

No server and no window here, so the whole workflow is testable with a list of frames. The web
page (``convert.label``) only forwards key names and shows :meth:`Labeler.state`.

Files (exactly the seed's): ``<stem>_<frame>.png`` (the raw frame, or with a camera ROI exactly the
daemon's crop of it: ``edge.preprocess.crop_roi``) and ``<stem>_data.csv`` as pandas ``to_csv``
writes it (``,name,good,error,break,length``, index 0..n-1, ``True``/``False``, or an empty cell
where the labeller cannot tell: ``UNKNOWNS``), rows sorted by frame. Every write is atomic (temp
file, fsync, ``os.replace``) and ordered so a crash never leaves a half-written CSV nor a CSV row
without its image: a save writes the PNG first, then the CSV; an undo rewrites the CSV first, then
deletes the PNG. What a crash can leave (an image without a row, a temp file) is reconciled when the
folder is opened again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from convert.collect import HEADER as COLLECT_HEADER
from convert.collect import Row as CollectRow
from convert.collect import csv_text as collect_csv_text
from convert.data import csv_rows, parse_seed_bool, seed_csv_text
from convert.fileio import atomic_write, fsync_dir
from convert.roi import check_fits, crop
from edge.errors import DataError
from edge.seam import SEAM_LABELS as ATTRS

TOGGLES = {"g": "good", "e": "error", "b": "break", "l": "length"}
#: Shift + a toggle's key: "cannot tell" (e.g. the stitch length at a camera scale where 2 mm and
#: 4 mm stitches look alike); saved as an empty cell, which ``train`` leaves out of the loss and
#: ``evaluate`` out of that attribute's figures
UNKNOWNS = {f"Shift+{k}": a for k, a in TOGGLES.items()}
STEPS = {
    "n": 1,
    "ArrowRight": 1,
    "ArrowLeft": -1,
    "Shift+ArrowRight": 10,
    "Shift+ArrowLeft": -10,
    "PageDown": 100,
    "PageUp": -100,
}
OTHER_KEYS = ("Home", "End", "s", "Enter", "u", "q")
KEYS = tuple(STEPS) + tuple(TOGGLES) + tuple(UNKNOWNS) + OTHER_KEYS

#: (keys, what they do): the page renders its help from this, so there is one list.
KEY_HELP = (
    ("n / →", "next"),
    ("←", "back"),
    ("⇧→ / ⇧←", "±10 frames"),
    ("PgDn / PgUp", "±100 frames"),
    ("Home / End", "first / last"),
    ("j", "jump to frame"),
    ("g e b l", "toggle good / error / break / length"),
    ("⇧g ⇧e ⇧b ⇧l", "cannot tell (an empty cell)"),
    ("s", "save"),
    ("Enter", "save + next"),
    ("u", "undo last save"),
    ("q", "quit"),
)


class FrameSource(Protocol):
    """Decoded frames of one video, by index (BGR uint8)."""

    frame_count: int

    def get(self, index: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Row:
    """One saved frame: its image name and one value per attribute (in ``ATTRS`` order): True,
    False, or None where nobody can tell (an empty cell)."""

    frame: int
    name: str
    values: tuple[bool | None, ...]

    def as_dict(self) -> dict[str, bool | None]:
        return dict(zip(ATTRS, self.values))


def contradiction(values: dict[str, bool | None]) -> str | None:
    """The warning for labels that contradict each other (``good`` = neither error nor break)."""
    bad = [a for a in ("error", "break") if values.get(a)]
    if values.get("good") and bad:
        return f"contradictory labels: good together with {' and '.join(bad)}"
    return None


def check_out_dir(folder: Path, stem: str, csv_path: Path) -> None:
    """The output folder exists (or is made) and is writable, and its CSV too: one ``DataError`` line otherwise."""
    if folder.exists() and not folder.is_dir():
        raise DataError(f"output folder {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"output folder {folder}: cannot create it ({e.strerror or e})") from None
    probe = folder / f".{stem}.write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"output folder {folder}: not writable ({e.strerror or e})") from None
    if csv_path.exists() and not os.access(csv_path, os.R_OK | os.W_OK):
        raise DataError(f"{csv_path}: not readable and writable")


def _cells(values: tuple[bool | None, ...]) -> tuple[bool | None, ...]:
    """A row's values as stored: bools, and None (an empty cell) where nobody can tell."""
    return tuple(None if v is None else bool(v) for v in values)


def csv_bytes(rows: list[Row]) -> bytes:
    """The CSV exactly as pandas ``DataFrame.to_csv`` writes it (unnamed index column first)."""
    return seed_csv_text(((row.name, row.values) for row in rows), ATTRS).encode("utf-8")


class _CsvBacked:
    """What both stores share: rewrite the CSV, and on failure put the row back as it was."""

    csv_path: Path

    def _write_csv(self) -> None:
        raise NotImplementedError

    def _set(self, frame: int, row: Row | None) -> None:
        raise NotImplementedError

    def _write_or_revert(self, frame: int, revert_to: Row | None) -> None:
        """Write the CSV; when the disk refuses, the frame's row becomes ``revert_to`` again and the
        error is one ``DataError`` line naming the CSV."""
        try:
            self._write_csv()
        except OSError as e:
            self._set(frame, revert_to)
            raise DataError(f"{self.csv_path}: cannot write ({e.strerror or e})") from None


class LabelStore(_CsvBacked):
    """The labels of one video in one folder: ``<stem>_<frame>.png`` + ``<stem>_data.csv``."""

    def __init__(self, out_dir: str | Path, stem: str):
        self.dir = Path(out_dir)
        self.stem = stem
        self.csv_path = self.dir / f"{stem}_data.csv"
        self.rows: dict[int, Row] = {}
        self._name_re = re.compile(rf"^{re.escape(stem)}_(\d+)\.png$")
        self._check_dir()

    def _check_dir(self) -> None:
        check_out_dir(self.dir, self.stem, self.csv_path)

    def image_name(self, frame: int) -> str:
        return f"{self.stem}_{frame}.png"

    def image_path(self, frame: int) -> Path:
        return self.dir / self.image_name(frame)

    # --- opening: read the CSV and reconcile it with the images -----------------------------

    def load(self) -> list[str]:
        """Read the CSV and reconcile; return notes on what was found (for the user to see).

        An image without a row that is newer than the CSV was left by a save that crashed
        between its two writes: it is removed. An older one is kept and reported (it may be
        the user's). A row without its image is reported (save that frame again to fix it).
        """
        notes: list[str] = []
        for tmp in sorted(self.dir.glob(f".{glob_escape(self.stem)}_*.tmp-*")):
            tmp.unlink(missing_ok=True)
            notes.append(f"removed temp file {tmp.name} left by an interrupted write")
        self.rows = self._read_csv()
        csv_mtime = self.csv_path.stat().st_mtime if self.csv_path.exists() else None
        removed, kept = [], []
        for png in sorted(self.dir.glob(f"{glob_escape(self.stem)}_*.png")):
            m = self._name_re.match(png.name)
            if not m or int(m.group(1)) in self.rows:
                continue
            if csv_mtime is not None and png.stat().st_mtime > csv_mtime:
                png.unlink(missing_ok=True)
                removed.append(png.name)
            else:
                kept.append(png.name)
        if removed:
            notes.append(
                f"removed {len(removed)} image(s) without a CSV row, left by an interrupted save: {_few(removed)}"
            )
        if kept:
            notes.append(
                f"{len(kept)} image(s) in {self.dir} have no row in {self.csv_path.name} "
                f"(kept; save those frames to label them): {_few(kept)}"
            )
        missing = [r.name for r in self.rows.values() if not (self.dir / r.name).is_file()]
        if missing:
            notes.append(
                f"{len(missing)} row(s) of {self.csv_path.name} have no image in {self.dir} "
                f"(save those frames again): {_few(missing)}"
            )
        return notes

    def _read_csv(self) -> dict[int, Row]:
        path = self.csv_path
        if not path.exists():
            return {}
        lines = csv_rows(path)
        if not lines:
            return {}
        header = [h.strip() for h in lines[0]]
        if header[-5:] != ["name", *ATTRS] or len(header) not in (5, 6):
            raise DataError(f"{path}: header {','.join(header)!r}, expected ',name,{','.join(ATTRS)}'")
        skip = len(header) - 5
        rows: dict[int, Row] = {}
        for lineno, fields in enumerate(lines[1:], start=2):
            if not fields or all(not c.strip() for c in fields):
                continue
            where = f"{path}:{lineno}"
            if len(fields) != len(header):
                raise DataError(f"{where}: {len(fields)} fields, header has {len(header)}")
            name, *vals = (c.strip() for c in fields[skip:])
            m = self._name_re.match(name)
            if not m:
                raise DataError(f"{where}: name {name!r} is not {self.stem}_<frame>.png")
            values = []
            for attr, v in zip(ATTRS, vals):
                b = parse_seed_bool(v)
                if b is None and v:
                    raise DataError(f"{where}: column {attr!r} has value {v!r}, expected True, False or empty")
                values.append(b)
            frame = int(m.group(1))
            rows[frame] = Row(frame, name, tuple(values))  # a repeated frame: the last row wins
        return rows

    # --- writing ------------------------------------------------------------------------------

    def _write_csv(self) -> None:
        atomic_write(self.csv_path, csv_bytes([self.rows[f] for f in sorted(self.rows)]))

    def put(self, frame: int, image_bgr: np.ndarray, values: tuple[bool | None, ...]) -> Row | None:
        """Save one frame (PNG first, then the CSV); return the row it replaced, if any."""
        ok, png = cv2.imencode(".png", image_bgr)
        if not ok:
            raise DataError(f"frame {frame}: OpenCV could not encode it as PNG")
        previous = self.rows.get(frame)
        path = self.image_path(frame)
        had_image = path.is_file()
        try:
            atomic_write(path, png.tobytes())
        except OSError as e:
            raise DataError(f"{path}: cannot write ({e.strerror or e})") from None
        self.rows[frame] = Row(frame, path.name, _cells(values))
        try:
            self._write_csv()
        except OSError as e:
            self._set(frame, previous)
            if not had_image:  # keep the promise: no image without its row
                path.unlink(missing_ok=True)
            raise DataError(f"{self.csv_path}: cannot write ({e.strerror or e})") from None
        return previous

    def restore(self, frame: int, previous: Row | None) -> None:
        """Undo one save: put back the row it replaced, or drop its row (CSV first) and image."""
        current = self.rows.get(frame)
        self._set(frame, previous)
        self._write_or_revert(frame, current)
        if previous is None:
            self.image_path(frame).unlink(missing_ok=True)
            fsync_dir(self.dir)

    def _set(self, frame: int, row: Row | None) -> None:
        if row is None:
            self.rows.pop(frame, None)
        else:
            self.rows[frame] = row


def _unknown_note(values: dict[str, bool | None]) -> str:
    unknown = [a for a in ATTRS if values[a] is None]
    return f"; cannot tell {', '.join(unknown)}" if unknown else ""


def glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


def _few(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" … (+{len(names) - n} more)" if len(names) > n else "")


class Labeler:
    """The labeling session: current frame, attribute values carried from frame to frame, undo.

    ``press(key)`` takes the page's key names (``KEYS``); ``goto(frame)`` is the jump box.
    On opening, it resumes at the frame after the last saved one, with that row's values.
    ``roi`` (x, y, w, h, the daemon's ``camera.roi``) makes every save the daemon's crop of the
    frame; it must lie inside the frames (``roi_origin`` names where it came from in errors).
    """

    def __init__(
        self,
        frames: FrameSource,
        store: LabelStore,
        notes: list[str] | None = None,
        video_name: str = "",
        roi: tuple[int, int, int, int] | None = None,
        roi_origin: str = "--roi",
    ):
        if frames.frame_count < 1:
            raise DataError(f"video {video_name or store.stem}: has no frames")
        self.frames = frames
        self.store = store
        self.video_name = video_name or store.stem
        first = frames.get(0)
        self.frame_size = (int(first.shape[1]), int(first.shape[0]))
        self.roi = tuple(int(v) for v in roi) if roi is not None else None
        self.roi_origin = roi_origin
        if self.roi is not None:
            check_fits(self.roi, *self.frame_size, f"video {self.video_name}", roi_origin)
        self.notes = list(notes or [])
        self.values: dict[str, bool | None] = {a: False for a in ATTRS}
        self.frame = 0
        self.undo_stack: list[tuple[int, Row | None]] = []
        self.quit = False
        self.message = ""
        # a folder's rows are pre-labels per image: shown on arrival, confirmed or corrected by a save
        self.prelabelled = bool(getattr(store, "prelabelled", False))
        if self.prelabelled:
            todo = [f for f in range(frames.frame_count) if not getattr(store.rows.get(f), "reviewed", False)]
            self.frame = todo[0] if todo else self.last_frame
            self._follow()
            done = frames.frame_count - len(todo)
            self.message = (
                f"{done} of {frames.frame_count} reviewed; starting at the first one not reviewed"
                if todo
                else f"all {frames.frame_count} images reviewed"
            )
        elif store.rows:
            last = store.rows[max(store.rows)]
            self.values = last.as_dict()
            self.frame = self._clamp(last.frame + 1)
            self.message = f"resumed after frame {last.frame} ({len(store.rows)} saved)"

    def _follow(self) -> None:
        """In a folder, arriving at an image with a row shows its labels (pre-labels or the reviewed ones)."""
        if self.prelabelled:
            row = self.store.rows.get(self.frame)
            if row is not None:
                self.values = row.as_dict()

    @property
    def last_frame(self) -> int:
        return self.frames.frame_count - 1

    def _clamp(self, frame: int) -> int:
        return max(0, min(int(frame), self.last_frame))

    def press(self, key: str) -> str:
        """Apply one key; return the message shown to the user."""
        if key in STEPS:
            self.step(STEPS[key])
        elif key in TOGGLES:
            attr = TOGGLES[key]
            self.values[attr] = not self.values[attr]  # "cannot tell" → on
            self.message = f"{attr} {'on' if self.values[attr] else 'off'}"
        elif key in UNKNOWNS:
            attr = UNKNOWNS[key]
            self.values[attr] = None
            self.message = f"{attr}: cannot tell (saved as an empty cell, left out of training)"
        elif key == "Home":
            self.goto(0)
        elif key == "End":
            self.goto(self.last_frame)
        elif key == "s":
            self.save()
        elif key == "Enter":
            if self.save():
                self.step(1, keep_message=True)
        elif key == "u":
            self.undo()
        elif key == "q":
            self.quit = True
            self.message = f"quit: {len(self.store.rows)} frame(s) saved in {self.store.csv_path}"
        else:
            self.message = f"unknown key {key!r}"
        return self.message

    def step(self, delta: int, keep_message: bool = False) -> None:
        target = self._clamp(self.frame + delta)
        msg = ""
        if target == self.frame:
            msg = "at the last frame" if delta > 0 else "at the first frame"
        self.frame = target
        self._follow()
        if not keep_message:
            self.message = msg

    def goto(self, frame: int) -> None:
        self.frame = self._clamp(frame)
        self._follow()
        self.message = "" if self.frame == frame else f"frame {frame} is out of range 0–{self.last_frame}"

    def save(self) -> bool:
        values = tuple(self.values[a] for a in ATTRS)
        try:
            image = crop(self.frames.get(self.frame), self.roi, f"frame {self.frame}", self.roi_origin)
            previous = self.store.put(self.frame, image, values)
        except DataError as e:
            self.message = f"not saved: {e}"
            return False
        self.undo_stack.append((self.frame, previous))
        name = self.store.image_name(self.frame)
        if self.prelabelled:
            on = [a for a in ATTRS if self.values[a]]
            how = "confirmed" if previous is not None and previous.values == values else "saved"
            self.message = f"{how} {name}: {', '.join(on) or 'nothing set'}" + _unknown_note(self.values)
        else:
            self.message = f"saved {name}" + (" (replaced its row)" if previous else "") + _unknown_note(self.values)
        warn = contradiction(self.values)
        if warn:
            self.message += f" — {warn}"
        return True

    def undo(self) -> None:
        if not self.undo_stack:
            self.message = "nothing to undo in this session"
            return
        frame, previous = self.undo_stack[-1]
        try:
            self.store.restore(frame, previous)
        except DataError as e:
            self.message = f"undo failed: {e}"
            return
        self.undo_stack.pop()
        self.frame = frame
        self._follow()
        name = self.store.image_name(frame)
        if previous is not None:
            self.message = f"undo: {name} back to its earlier labels"
        elif self.prelabelled:
            self.message = f"undo: removed the row of {name} (the image stays)"
        else:
            self.message = f"undo: deleted {name} and its row"

    @property
    def saved_size(self) -> tuple[int, int]:
        """(width, height) of the PNGs this session writes: the ROI's, or the whole frame's."""
        return (self.roi[2], self.roi[3]) if self.roi is not None else self.frame_size

    def check_saved_sizes(self) -> None:
        """Refuse a folder whose saved PNGs have another size than this session saves (another ROI)."""
        want = self.saved_size
        odd: list[str] = []
        size = (0, 0)
        for row in self.store.rows.values():
            got = png_size(self.store.dir / row.name)
            if got is not None and got != want:
                odd.append(row.name)
                size = got
        if odd:
            how = (
                f"crops of {self.roi_origin} {list(self.roi)}"
                if self.roi is not None
                else "whole frames (no --roi / --config)"
            )
            raise DataError(
                f"{self.store.dir}: {len(odd)} saved image(s) are {size[0]}x{size[1]} "
                f"({_few(odd, 3)}), but this session saves {want[0]}x{want[1]} {how}: "
                f"label into another --out folder or give the ROI they were saved with"
            )

    def counts(self) -> dict[str, int]:
        rows = self.store.rows.values()
        out = {a: sum(r.values[i] is True for r in rows) for i, a in enumerate(ATTRS)}
        out["unknown"] = sum(None in r.values for r in rows)
        out["saved"] = len(self.store.rows)
        if self.prelabelled:
            out["reviewed"] = sum(bool(getattr(r, "reviewed", False)) for r in rows)
        out["contradictory"] = sum(contradiction(r.as_dict()) is not None for r in rows)
        return out

    def state(self) -> dict:
        """Everything the page shows, JSON-ready."""
        row = self.store.rows.get(self.frame)
        return {
            "video": self.video_name,
            "out": str(self.store.dir),
            "csv": self.store.csv_path.name,
            "frame": self.frame,
            "frames": self.frames.frame_count,
            "frame_size": list(self.frame_size),
            "roi": list(self.roi) if self.roi is not None else None,
            "roi_origin": self.roi_origin if self.roi is not None else None,
            "saved_size": list(self.saved_size),
            "image_name": self.store.image_name(self.frame),
            "values": dict(self.values),
            "saved": row.as_dict() if row else None,
            "mode": "images" if self.prelabelled else "video",
            "reviewed": getattr(row, "reviewed", True) if row else None,
            "source": getattr(row, "source", "") if row else "",
            "counts": self.counts(),
            "warning": contradiction(self.values),
            "message": self.message,
            "notes": self.notes,
            "can_undo": bool(self.undo_stack),
            "undo_frame": self.undo_stack[-1][0] if self.undo_stack else None,
            "quit": self.quit,
            "keys": list(KEYS),
            "help": [list(h) for h in KEY_HELP],
        }


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, or ``None`` when it is missing or not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def open_session(
    frames: FrameSource,
    out_dir: str | Path,
    stem: str,
    video_name: str = "",
    log: Callable[[str], None] | None = None,
    roi: tuple[int, int, int, int] | None = None,
    roi_origin: str = "--roi",
) -> Labeler:
    """Open (or resume) the labels of one video in ``out_dir``: reconcile, then a ready Labeler.

    With ``roi`` the saved PNGs are the daemon's crop of each frame; a folder already holding
    PNGs of another size (saved with another ROI or none) is refused, so one folder is one view.
    """
    store = LabelStore(out_dir, stem)
    notes = store.load()
    for n in notes:
        if log:
            log(n)
    labeler = Labeler(frames, store, notes, video_name, roi, roi_origin)
    labeler.check_saved_sizes()
    return labeler


# --- a folder of images (collect's output, or any folder of PNG/JPG) ----------------------------


@dataclass(frozen=True)
class FolderRow(Row):
    """A row of a folder's ``data.csv``: also where it came from and whether a person reviewed it."""

    source: str = ""
    reviewed: bool = False


class FolderStore(_CsvBacked):
    """The labels of a folder of images: one ``data.csv`` (collect's layout), images left as they are.

    ``data.csv`` is ``,name,good,error,break,length,source,reviewed`` (``convert.collect``): rows
    already there are *pre-labels* (the model's, or an operator's verdict) until a person saves
    the frame, which sets ``reviewed``. A plain seed CSV (``,name,good,…``) is read too; it is
    written back in collect's layout. Names are relative to the CSV's folder. Saving rewrites the
    CSV atomically; undo puts the row back as it was (or removes it) and never touches an image.
    Rows whose image is not in the folder are kept as they are.
    """

    prelabelled = True

    def __init__(self, images: list[Path], out_dir: str | Path):
        self.dir = Path(out_dir)
        self.csv_path = self.dir / "data.csv"
        self.stem = "data"
        self.images = [Path(p) for p in images]
        self._index = {p.resolve(): i for i, p in enumerate(self.images)}
        self.rows: dict[int, FolderRow] = {}
        self._order: list[int | FolderRow] = []  # CSV order: a frame, or a row whose image is elsewhere
        check_out_dir(self.dir, self.stem, self.csv_path)

    def image_name(self, frame: int) -> str:
        p = self.images[frame]
        try:
            return os.path.relpath(p.resolve(), self.dir.resolve())
        except ValueError:  # another drive (Windows): absolute
            return str(p.resolve())

    def load(self) -> list[str]:
        notes: list[str] = []
        for tmp in sorted(self.dir.glob(".data.csv.tmp-*")):
            tmp.unlink(missing_ok=True)
            notes.append(f"removed temp file {tmp.name} left by an interrupted write")
        if not self.csv_path.exists():
            return notes
        lines = csv_rows(self.csv_path)
        if not lines:
            return notes
        header = [h.strip() for h in lines[0]]
        plain = ["name", *ATTRS]
        if header[1:] == list(COLLECT_HEADER[1:]):
            meta = True
        elif header[-5:] == plain and len(header) in (5, 6):
            meta = False
        else:
            raise DataError(
                f"{self.csv_path}: header {','.join(header)!r}, expected ',name,{','.join(ATTRS)}[,source,reviewed]'"
            )
        name_col = header.index("name")
        elsewhere = []
        for lineno, fields in enumerate(lines[1:], start=2):
            if not fields or all(not c.strip() for c in fields):
                continue
            where = f"{self.csv_path}:{lineno}"
            if len(fields) != len(header):
                raise DataError(f"{where}: {len(fields)} fields, header has {len(header)}")
            name = fields[name_col].strip()
            cells = [c.strip() for c in fields[name_col + 1 : name_col + 1 + len(ATTRS)]]
            values = tuple(parse_seed_bool(v) for v in cells)
            reviewed_cell = parse_seed_bool(fields[-1]) if meta else False
            if any(b is None and v for b, v in zip(values, cells)) or reviewed_cell is None:
                raise DataError(
                    f"{where}: expected True, False or empty in the label columns, True or False in reviewed"
                )
            source = fields[-2] if meta else ""
            reviewed = bool(reviewed_cell)
            path = Path(name) if Path(name).is_absolute() else self.dir / name
            frame = self._index.get(path.resolve())
            if frame is None:
                row = FolderRow(-1, name, values, source, reviewed)
                self._order.append(row)
                elsewhere.append(name)
                continue
            if frame not in self.rows:
                self._order.append(frame)
            self.rows[frame] = FolderRow(frame, self.image_name(frame), values, source, reviewed)
        if elsewhere:
            notes.append(
                f"{len(elsewhere)} row(s) of {self.csv_path.name} name images not in this folder "
                f"(kept): {_few(elsewhere)}"
            )
        return notes

    def _write_csv(self) -> None:
        rows = []
        for item in self._order:
            r = item if isinstance(item, FolderRow) else self.rows.get(item)
            if r is not None:
                rows.append(CollectRow(r.name, r.values, r.source, r.reviewed))
        atomic_write(self.csv_path, collect_csv_text(rows).encode("utf-8"))

    def put(self, frame: int, image_bgr: np.ndarray, values: tuple[bool | None, ...]) -> Row | None:
        """Save the frame's labels as reviewed (the image stays as it is); return the row it replaced."""
        previous = self.rows.get(frame)
        source = previous.source if previous is not None else ""
        self.rows[frame] = FolderRow(frame, self.image_name(frame), _cells(values), source, True)
        if previous is None:
            self._order.append(frame)
        self._write_or_revert(frame, previous)
        return previous

    def restore(self, frame: int, previous: Row | None) -> None:
        """Undo one save: the row as it was before (a pre-label again), or no row; never the image."""
        current = self.rows.get(frame)
        self._set(frame, previous)
        self._write_or_revert(frame, current)

    def _set(self, frame: int, row: Row | None) -> None:
        if row is None:
            self.rows.pop(frame, None)
            if frame in self._order:
                self._order.remove(frame)
        else:
            assert isinstance(row, FolderRow)
            self.rows[frame] = row
            if frame not in self._order:
                self._order.append(frame)


def open_folder_session(
    frames: FrameSource,
    images: list[Path],
    out_dir: str | Path,
    folder_name: str = "",
    log: Callable[[str], None] | None = None,
) -> Labeler:
    """Open (or resume) the review of a folder of images: pre-labels from its ``data.csv``.

    It starts at the first image no person has reviewed, with that image's pre-labels.
    """
    store = FolderStore(images, out_dir)
    notes = store.load()
    for n in notes:
        if log:
            log(n)
    return Labeler(frames, store, notes, folder_name)  # type: ignore[arg-type]
